"""Lazy weights (--weights lazy): a meta skeleton whose layers are read from safetensors as they run.

Counts equal the eager load's exactly; each layer is read once per layer-major block; keys go
through transformers' renaming (old LayerNorm.gamma names, a checkpoint without the base-model
prefix); .bin-only checkpoints are converted once; what cannot be read lazily is refused before any
work; a ~1 GB checkpoint records with a peak RSS within four layers plus embeddings of a tiny model's.
"""
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import OPTConfig, OPTForCausalLM

import fastneurons
from fastneurons.models import lazy
from fastneurons.recording import runner
from fastneurons.store import open_counts
from same_counts import assert_same_store
import test_record_architectures as families
import test_runner as opt

QUIET = lambda *args: None  # noqa: E731
checkpoints = families.checkpoints
corpus = families.corpus


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2", "gpt_neox"])
def test_lazy_counts_equal_the_eager_load(tmp_path, checkpoints, corpus, family):
    eager = families._config(checkpoints[family], corpus, tmp_path / "eager.h5", weights="eager")
    runner.record(eager, log=QUIET)
    lazy_run = dataclasses.replace(eager, out=str(tmp_path / "lazy.h5"), weights="lazy")
    runner.record(lazy_run, log=QUIET)
    assert_same_store(eager.out, lazy_run.out)


@pytest.mark.parametrize("pre_ln", [True, False])
def test_lazy_opt_reads_each_layer_once_per_block(tmp_path, pre_ln, monkeypatch):
    model = opt._opt(tmp_path, "opt", pre_ln=pre_ln, layers=3)
    text = tmp_path / "t.txt"
    text.write_text(opt.TEXT_A + opt.TEXT_B)
    eager = opt._config(model, [str(text)], tmp_path / "eager.h5", weights="eager", unit_batches=1)
    runner.record(eager, log=QUIET)
    made = []
    original = lazy.load_lazy
    monkeypatch.setattr(runner, "load_lazy", lambda *a, **k: made.append(original(*a, **k)) or made[-1])
    unit_tokens = eager.batch_size * eager.seq_len
    lazy_run = dataclasses.replace(eager, out=str(tmp_path / "lazy.h5"), weights="lazy",
                                   block_tokens=str(2 * unit_tokens))
    runner.record(lazy_run, log=QUIET)
    assert_same_store(eager.out, lazy_run.out)
    with open_counts(lazy_run.out) as counts:
        units = len(counts.header.corpora[0].units)
    assert units >= 3 and dict(made[0].weights.loads) == {i: -(-units // 2) for i in range(3)}
    assert all(p.is_meta for p in made[0].model.model.decoder.layers.parameters())  # released at the end


def test_keys_without_the_base_model_prefix_go_through_transformers_renaming(tmp_path):
    """The hub's facebook/opt-* checkpoints were saved from OPTModel: keys 'decoder.layers...' with no
    'model.' prefix, which from_pretrained (and so the lazy key map) adds."""
    source = opt._opt(tmp_path, "opt", pre_ln=True, layers=2)
    tensors = load_file(str(source / "model.safetensors"))
    old = {key.removeprefix("model."): value for key, value in tensors.items()}
    assert "decoder.layers.0.fc1.weight" in old
    (tmp_path / "old").mkdir()
    for name in os.listdir(source):
        if name != "model.safetensors":
            (tmp_path / "old" / name).write_bytes((source / name).read_bytes())
    save_file(old, str(tmp_path / "old" / "model.safetensors"), metadata={"format": "pt"})
    text = tmp_path / "t.txt"
    text.write_text(opt.TEXT_A)
    eager = opt._config(source, [str(text)], tmp_path / "eager.h5", weights="eager")
    runner.record(eager, log=QUIET)
    renamed = dataclasses.replace(eager, model=str(tmp_path / "old"), out=str(tmp_path / "old.h5"), weights="lazy")
    runner.record(renamed, log=QUIET)
    assert_same_store(eager.out, renamed.out)


def test_bin_only_checkpoint_is_converted_once(tmp_path):
    source = opt._opt(tmp_path, "opt", layers=2)
    state = load_file(str(source / "model.safetensors"))
    (tmp_path / "bin").mkdir()
    for name in os.listdir(source):
        if name != "model.safetensors":
            (tmp_path / "bin" / name).write_bytes((source / name).read_bytes())
    torch.save(state, tmp_path / "bin" / "pytorch_model.bin")
    text = tmp_path / "t.txt"
    text.write_text(opt.TEXT_A)
    said = []
    eager = opt._config(source, [str(text)], tmp_path / "eager.h5", weights="eager")
    runner.record(eager, log=QUIET)
    converted = dataclasses.replace(eager, model=str(tmp_path / "bin"), out=str(tmp_path / "bin.h5"), weights="lazy")
    runner.record(converted, log=said.append)
    assert any("converting 1 .bin file" in line for line in said)
    assert (tmp_path / "bin" / lazy.CONVERTED_DIR / "pytorch_model.safetensors").is_file()
    assert_same_store(eager.out, converted.out)
    said.clear()
    runner.record(dataclasses.replace(converted, out=str(tmp_path / "again.h5")), log=said.append)
    assert not any("converting" in line for line in said)   # once


def test_refusals_before_any_work(tmp_path):
    source = opt._opt(tmp_path, "opt", layers=2)
    tensors = load_file(str(source / "model.safetensors"))
    del tensors["model.decoder.layers.1.fc1.weight"]
    save_file(tensors, str(source / "model.safetensors"), metadata={"format": "pt"})
    text = tmp_path / "t.txt"
    text.write_text(opt.TEXT_A)
    config = opt._config(source, [str(text)], tmp_path / "x.h5", weights="lazy")
    with pytest.raises(lazy.UnsupportedCheckpoint, match="layers.1.fc1.weight"):
        runner.record(config, log=QUIET)
    assert not (tmp_path / "x.h5").exists()
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(lazy.UnsupportedCheckpoint, match="GGUF"):
        lazy.load_lazy(str(gguf))


# Peak RSS of this process image: VmHWM. (ru_maxrss would do in a fresh shell, but Linux carries it
# over fork + exec, so a child of this 1 GB pytest process would report pytest's own peak.)
RSS = """import json, sys
from fastneurons.cli import main
code = main(sys.argv[1:])
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(json.dumps({"code": code, "maxrss": int(hwm.split()[1]) * 1024}))
"""


def _peak_rss(tmp_path, model, weights):
    text = tmp_path / "ids.jsonl"   # pre-tokenized ids: the wide model's vocabulary is 1,000 ids
    text.write_text("\n".join(json.dumps([2] + list(range(10 + i, 25 + i))) for i in range(3)) + "\n")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(fastneurons.__file__))),
               OMP_NUM_THREADS="1")
    out = tmp_path / f"{model.name}-{weights}.h5"
    args = [sys.executable, "-c", RSS, "record", "--model", str(model), "--corpus", str(text), "--out", str(out),
            "--seq-len", "16", "--batch-size", "1", "--tokens", "30", "--ngram-layers", "0", "--no-positions",
            "--no-progress", "--threads", "1", "--weights", weights]
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, done.stderr[-2000:]
    return result["maxrss"]


def _wide_opt(path, layers, hidden, ffn, seed=0):
    torch.manual_seed(seed)
    config = OPTConfig(vocab_size=1000, hidden_size=hidden, num_hidden_layers=layers, ffn_dim=ffn,
                       num_attention_heads=8, max_position_embeddings=64, word_embed_proj_dim=hidden,
                       bos_token_id=2, eos_token_id=2, pad_token_id=1)
    with torch.device("meta"):
        model = OPTForCausalLM(config)
    tensors = {name: torch.randn(p.shape) * 0.02 for name, p in model.state_dict().items()
               if not name.startswith("lm_head")}
    path.mkdir()
    config.save_pretrained(path)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    layer_bytes = sum(v.numel() * 4 for k, v in tensors.items() if ".layers.0." in k)
    embed_bytes = sum(v.numel() * 4 for k, v in tensors.items() if ".layers." not in k)
    return layer_bytes, embed_bytes


def test_one_gigabyte_checkpoint_records_in_the_ram_of_four_layers(tmp_path):
    """Peak RSS (VmHWM of a real `fastneurons record` process): the ~1 GB checkpoint read lazily
    stays within four layers plus the embeddings of a tiny model's run; read eagerly it does not."""
    layer_bytes, embed_bytes = _wide_opt(tmp_path / "big", layers=7, hidden=1024, ffn=16384)
    assert 7 * layer_bytes > 1.0e9
    _wide_opt(tmp_path / "tiny", layers=1, hidden=32, ffn=64)
    tiny = _peak_rss(tmp_path, tmp_path / "tiny", "eager")
    big_lazy = _peak_rss(tmp_path, tmp_path / "big", "lazy")
    big_eager = _peak_rss(tmp_path, tmp_path / "big", "eager")
    print(f"peak RSS above the tiny model's: lazy {(big_lazy - tiny) / 2**20:.0f} MiB, "
          f"eager {(big_eager - tiny) / 2**20:.0f} MiB; one layer {layer_bytes / 2**20:.0f} MiB")
    assert big_lazy - tiny <= 4 * layer_bytes + embed_bytes
    assert big_eager - tiny > 6 * layer_bytes   # the measurement can tell: eagerly, the model is resident
