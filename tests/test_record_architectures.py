"""`record()` end to end on every non-OPT row of the architecture table, against the plain reference.

Random-weight GPT-2, GPT-NeoX (Pythia), Llama, Qwen3, OLMo-2, Gemma, Gemma-2, Phi and GPT-J checkpoints,
saved with save_pretrained like real ones, fp32 on the CPU: every dense counter and every n-gram table
must equal, exactly, what the plain hooks-based way (fastneurons.bench.plain_way) counts on the same
micro-batches. The reference names each family's hook module itself, so a wrong row in
architectures.py fails here.
"""
import json

import numpy as np
import pytest
import torch
from transformers import (Gemma2Config, Gemma2ForCausalLM, GemmaConfig, GemmaForCausalLM, GPT2Config,
                          GPT2LMHeadModel, GPTJConfig, GPTJForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM,
                          LlamaConfig, LlamaForCausalLM, Olmo2Config, Olmo2ForCausalLM, PhiConfig, PhiForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)

from fastneurons.recording import runner
from fastneurons.bench.compare import plain_differences
from fastneurons.bench.plain_way import plain_record
from fastneurons.config import RecordConfig
from fastneurons.recording.corpus import parse_corpus_arg, plan_corpus
from fastneurons.models.loading import gpt2_tokenizer
from fastneurons.store import open_counts

VOCAB = 50257  # GPT-2 BPE, so gpt2_tokenizer() is each checkpoint's tokenizer
CODE = ("def add(a, b):\n    return a + b\n\nclass Point:\n    '''A point in the plane.'''\n"
        "    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n") * 4
PROSE = ("The quick brown fox jumps over the lazy dog. Neurons fire after n-grams; "
         "some neurons never fire at all, and some fire only at certain positions. ") * 5
QUIET = lambda *args: None  # noqa: E731


def _gpt2():
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_inner=96, n_positions=64,
                        activation_function="gelu_new", bos_token_id=50256, eos_token_id=50256)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():  # shift biases so the neurons range from always to never above the threshold
        for block in model.transformer.h:
            block.mlp.c_fc.bias.add_(torch.linspace(-0.5, 0.4, 96))
    return model


def _neox():
    config = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                           intermediate_size=80, max_position_embeddings=64, rotary_pct=0.25,
                           use_parallel_residual=True, bos_token_id=50256, eos_token_id=50256)
    model = GPTNeoXForCausalLM(config)
    with torch.no_grad():
        for layer in model.gpt_neox.layers:
            layer.mlp.dense_h_to_4h.bias.add_(torch.linspace(-0.5, 0.3, 80))
    return model


def _llama():
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=72, max_position_embeddings=64,
                         hidden_act="silu", bos_token_id=50256, eos_token_id=50256, tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def _qwen3():
    config = Qwen3Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=8, intermediate_size=64, max_position_embeddings=64,
                         hidden_act="silu", bos_token_id=50256, eos_token_id=50256, tie_word_embeddings=False)
    return Qwen3ForCausalLM(config)


def _olmo2():
    config = Olmo2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                         intermediate_size=56, max_position_embeddings=64, hidden_act="silu", pad_token_id=None,
                         bos_token_id=50256, eos_token_id=50256, tie_word_embeddings=False)
    return Olmo2ForCausalLM(config)


def _gemma():
    config = GemmaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=1, head_dim=8, intermediate_size=48, max_position_embeddings=64,
                         hidden_act="gelu_pytorch_tanh", pad_token_id=None, bos_token_id=50256, eos_token_id=50256)
    return GemmaForCausalLM(config)


def _gemma2():  # tied embeddings, GELU-tanh gate, embedding scaling, logit soft-capping, sandwich norms
    config = Gemma2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, intermediate_size=64,
                          max_position_embeddings=64, sliding_window=16, hidden_activation="gelu_pytorch_tanh",
                          pad_token_id=None, bos_token_id=50256, eos_token_id=50256)
    return Gemma2ForCausalLM(config)


def _phi():
    config = PhiConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                       intermediate_size=88, max_position_embeddings=64, hidden_act="gelu_new",
                       bos_token_id=50256, eos_token_id=50256)
    model = PhiForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.fc1.bias.add_(torch.linspace(-0.5, 0.4, 88))
    return model


def _gptj():
    config = GPTJConfig(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64, rotary_dim=4,
                        n_inner=None, activation_function="gelu_new", bos_token_id=50256, eos_token_id=50256)
    model = GPTJForCausalLM(config)
    with torch.no_grad():
        for block in model.transformer.h:
            block.mlp.fc_in.bias.add_(torch.linspace(-0.5, 0.3, 128))  # n_inner None: 4 * n_embd neurons
    return model


FAMILIES = {"gpt2": (_gpt2, GPT2LMHeadModel), "gpt_neox": (_neox, GPTNeoXForCausalLM),
            "llama": (_llama, LlamaForCausalLM), "qwen3": (_qwen3, Qwen3ForCausalLM),
            "olmo2": (_olmo2, Olmo2ForCausalLM), "gemma": (_gemma, GemmaForCausalLM),
            "gemma2": (_gemma2, Gemma2ForCausalLM), "phi": (_phi, PhiForCausalLM), "gptj": (_gptj, GPTJForCausalLM)}
ROW = {"qwen3": "llama"}  # the architecture-table row a family records as, where the names differ


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{family: directory} of random-weight checkpoints with the GPT-2 tokenizer saved beside them."""
    root = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for seed, (name, (build, _)) in enumerate(FAMILIES.items()):
        torch.manual_seed(seed)
        model = build()
        model.eval().save_pretrained(root / name)
        gpt2_tokenizer().save_pretrained(root / name)
        paths[name] = root / name
    return paths


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three domains: a .txt, a .jsonl of texts of growing length, a .jsonl of pre-tokenized ids."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "code.txt").write_text(CODE)
    with open(root / "prose.jsonl", "w") as f:
        for i in range(5):
            f.write(json.dumps({"text": PROSE[: 50 + 45 * i]}) + "\n")
    rng = np.random.default_rng(7)
    with open(root / "ids.jsonl", "w") as f:  # a few repeated ids, so n-grams recur
        for length in (9, 30, 17, 24):
            f.write(json.dumps([50256] + rng.integers(100, 120, length - 1).tolist()) + "\n")
    return [str(root / "code.txt"), "prose=" + str(root / "prose.jsonl"), "ids=" + str(root / "ids.jsonl")]


def _config(model_dir, corpus, out, **overrides):
    values = dict(model=str(model_dir), corpus=corpus, out=str(out), seq_len=40, batch_size=3, unit_batches=2,
                  ngram_layers=["0", "2"], progress=False)
    values.update(overrides)
    return RecordConfig(**values)


def _reference(config, model_dir, family, gated_product=False):
    """The plain way's counts on exactly the micro-batches of the recording's plan."""
    model_class = FAMILIES[family][1]
    model = model_class.from_pretrained(model_dir).eval()
    plan = plan_corpus([parse_corpus_arg(c) for c in config.corpus], gpt2_tokenizer(), seq_len=config.seq_len,
                       batch_size=config.batch_size, unit_batches=config.unit_batches,
                       max_tokens=config.max_tokens, full_length=config.full_length, bos_id=config.bos_id,
                       vocab_size=VOCAB)
    batches = [(mb.input_ids, mb.attention_mask) for u in range(plan.num_units) for mb in plan.unit(u).batches]
    assert any((mb[1] == 0).any() for mb in batches) or config.full_length  # padding is exercised
    modules = _hook_modules(family, model, gated_product)
    return plain_record(model, modules, batches, max_positions=config.seq_len, threshold=config.threshold,
                        count_bos=config.count_bos, ngram_layers=config.ngram_layer_list(3), orders=config.orders,
                        pack_bits=16, use_input=gated_product, transform=torch.abs if gated_product else None)


def _hook_modules(family, model, gated_product=False):
    """Each family's neuron module, named here independently of architectures.py."""
    if gated_product:  # the down projection's input is act(gate) * up
        return {i: layer.mlp.down_proj for i, layer in enumerate(model.model.layers)}
    if family == "gpt2":
        return {i: block.mlp.c_fc for i, block in enumerate(model.transformer.h)}
    if family == "gpt_neox":
        return {i: layer.mlp.dense_h_to_4h for i, layer in enumerate(model.gpt_neox.layers)}
    if family == "phi":
        return {i: layer.mlp.fc1 for i, layer in enumerate(model.model.layers)}
    if family == "gptj":
        return {i: block.mlp.fc_in for i, block in enumerate(model.transformer.h)}
    return {i: layer.mlp.gate_proj for i, layer in enumerate(model.model.layers)}  # gated (Llama, Gemma, ...)


def _assert_equal_counts(path, ref, orders, ngram_layers):
    assert plain_differences(path, ref) == []
    with open_counts(path) as counts:
        assert counts.complete
        assert counts.tokens == ref.tokens > 0
        assert list(counts.ngram_layers) == list(ngram_layers) and list(counts.ngram_orders) == list(orders)
        return dict(counts.metadata)


def _assert_mixed(ref, layer=0):
    """The counts can tell a wrong hook apart: some neurons never active, some active at most tokens."""
    active = ref.active[layer]
    assert (active < ref.tokens).any() and (active > 0).any()


CASES = [  # (family, record settings): batch shapes, padding or full length, thresholds, orders
    ("gpt2", dict(threshold=0.1)),
    ("gpt2", dict(threshold=-0.05, batch_size=1, unit_batches=3, full_length=True, seq_len=32, orders=[1, 3])),
    ("gpt_neox", dict()),
    ("gpt_neox", dict(batch_size=4, unit_batches=1, count_bos=True, ngram_layers=["1"], commit_seconds=0.001)),
    ("llama", dict()),
    ("llama", dict(batch_size=2, seq_len=32, threshold=0.02, orders=[2])),
    ("qwen3", dict(threshold=0.02)),
    ("olmo2", dict(batch_size=2, unit_batches=3, orders=[1, 2])),
    ("gemma", dict(threshold=0.01, batch_size=2)),
    ("gemma2", dict(threshold=0.01)),
    ("gemma2", dict(batch_size=1, full_length=True, seq_len=32, count_bos=True, ngram_layers=["1"])),
    ("phi", dict()),
    ("gptj", dict(threshold=0.05, batch_size=4, unit_batches=1, orders=[1, 3])),
]


@pytest.mark.parametrize("family,settings", CASES, ids=[f"{f}-{i}" for i, (f, _) in enumerate(CASES)])
def test_record_equals_plain_reference(tmp_path, checkpoints, corpus, family, settings):
    config = _config(checkpoints[family], corpus, tmp_path / "counts.h5", **settings)
    runner.record(config, log=QUIET)
    ref = _reference(config, checkpoints[family], family)
    _assert_mixed(ref)
    meta = _assert_equal_counts(config.out, ref, config.orders, config.ngram_layer_list(3))
    assert meta["architecture"] == ROW.get(family, family)
    assert meta["threshold"] == config.threshold


@pytest.mark.parametrize("family,act", [("llama", "SiLU"), ("gemma2", "GELU")])
def test_gated_product_equals_plain_reference(tmp_path, checkpoints, corpus, family, act):
    """--gated-product: |act(gate(x)) * up(x)| > threshold, the input of down_proj."""
    config = _config(checkpoints[family], corpus, tmp_path / "counts.h5", gated_product=True, threshold=0.004)
    runner.record(config, log=QUIET)
    ref = _reference(config, checkpoints[family], family, gated_product=True)
    _assert_mixed(ref)
    meta = _assert_equal_counts(config.out, ref, config.orders, [0, 2])
    assert f"|{act}(gate_proj(x)) * up_proj(x)|" in meta["neuron_definition"] and meta["gated_product"] is True
    gate = _reference(_config(checkpoints[family], corpus, tmp_path / "g.h5", threshold=0.004),
                      checkpoints[family], family)
    assert not np.array_equal(gate.active[0], ref.active[0])  # the two definitions really differ


def test_gated_product_is_refused_for_ungated_families(tmp_path, checkpoints, corpus):
    with pytest.raises(ValueError, match="gated"):
        runner.record(_config(checkpoints["gpt2"], corpus, tmp_path / "x.h5", gated_product=True), log=QUIET)


def test_large_vocabulary_uses_21_bit_keys_and_needs_no_tokenizer(tmp_path):
    """A Llama with 70,000 ids (> 2**16): n-gram keys pack 21 bits per id; ids above 65,535 occur in
    every order; the checkpoint has no tokenizer files, so the corpus is pre-tokenized ids."""
    vocab = 70_000
    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64)
    LlamaForCausalLM(config).eval().save_pretrained(tmp_path / "llama")
    rng = np.random.default_rng(11)
    ids = tmp_path / "ids.jsonl"
    with open(ids, "w") as f:  # ids from a small set around 2**16, so n-grams recur across the boundary
        for length in (20, 33, 12, 40, 27):
            f.write(json.dumps([1] + rng.choice([7, 65_534, 65_535, 65_536, 69_999], length - 1).tolist()) + "\n")
    record = _config(tmp_path / "llama", [str(ids)], tmp_path / "counts.h5", ngram_layers=["0", "1"])
    runner.record(record, log=QUIET)
    model = LlamaForCausalLM.from_pretrained(tmp_path / "llama").eval()
    plan = plan_corpus([parse_corpus_arg(str(ids))], None, seq_len=record.seq_len, batch_size=record.batch_size,
                       unit_batches=record.unit_batches, vocab_size=vocab)
    batches = [(mb.input_ids, mb.attention_mask) for u in range(plan.num_units) for mb in plan.unit(u).batches]
    ref = plain_record(model, _hook_modules("llama", model), batches, max_positions=record.seq_len,
                       threshold=0.0, count_bos=False, ngram_layers=[0, 1], orders=[1, 2, 3], pack_bits=21)
    meta = _assert_equal_counts(record.out, ref, [1, 2, 3], [0, 1])
    assert meta["pack_bits"] == 21
    with open_counts(record.out) as counts:
        keys, _ = counts.ngram_seen(3)
        assert (keys >> 42).max() >= 2**16 and counts.vocab is None
