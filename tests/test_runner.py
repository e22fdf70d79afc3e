"""`record()` end to end against the plain hooks-based reference, on random-weight OPTs.

Exact integer equality of every counter (dense and n-gram) in fp32 on the CPU; resume after an
interruption and shard + merge give exactly the uninterrupted single-process counts.
"""
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM

import fastneurons
from fastneurons.recording import runner
from interrupts import PACKAGE_ENV, interrupt_after_commits, kill_when_units_held
from fastneurons.bench.compare import plain_differences
from fastneurons.bench.plain_way import plain_record
from fastneurons.config import RecordConfig
from fastneurons.recording.corpus import parse_corpus_arg, plan_corpus
from fastneurons.models.loading import gpt2_tokenizer
from fastneurons.store import StoreError, merge_stores, open_counts
from same_counts import assert_same_datasets, assert_same_store

TEXT_A = ("def add(a, b):\n    return a + b\n\nclass Point:\n    '''A point in the plane.'''\n"
          "    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n") * 6
TEXT_B = ("The quick brown fox jumps over the lazy dog. Neurons fire after n-grams; "
          "some neurons never fire at all, and some fire only at certain positions. ") * 8


STORE_GROUPS = ("corpora", "dense", "ngrams", "summaries", "counted")  # all but the settings ("meta")


def _opt(tmp_path, name, pre_ln=True, layers=3, seed=0):
    torch.manual_seed(seed)
    config = OPTConfig(vocab_size=50272, hidden_size=32, num_hidden_layers=layers, ffn_dim=200,
                       num_attention_heads=4, max_position_embeddings=128, do_layer_norm_before=pre_ln,
                       word_embed_proj_dim=32 if pre_ln else 16, bos_token_id=50256, eos_token_id=50256,
                       pad_token_id=1)
    model = OPTForCausalLM(config).eval()
    with torch.no_grad():  # shift fc1 biases so some neurons are rare or dead, like trained OPTs
        for i, layer in enumerate(model.model.decoder.layers):
            layer.fc1.bias.add_(torch.linspace(-0.6, 0.3, config.ffn_dim))
    path = tmp_path / name
    model.save_pretrained(path)
    gpt2_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "code.txt").write_text(TEXT_A)
    with open(root / "prose.jsonl", "w") as f:
        for i in range(6):
            f.write(json.dumps({"text": TEXT_B[: 60 + 40 * i]}) + "\n")
    return [str(root / "code.txt"), "prose=" + str(root / "prose.jsonl")]


def _config(model, corpus, out, **overrides):
    values = dict(model=str(model), corpus=corpus, out=str(out), seq_len=48, batch_size=3, unit_batches=2,
                  ngram_layers=["0", "1"], progress=False, commit_seconds=0)
    values.update(overrides)
    return RecordConfig(**values)


def _plan(config):
    """The recording's corpus plan, made again from its settings."""
    return plan_corpus([parse_corpus_arg(c) for c in config.corpus], gpt2_tokenizer(), seq_len=config.seq_len,
                       batch_size=config.batch_size, unit_batches=config.unit_batches,
                       max_tokens=config.max_tokens, full_length=config.full_length, vocab_size=50272)


def _reference(config, model_dir):
    """Counts of the plain way on exactly the micro-batches of the recording's plan."""
    model = OPTForCausalLM.from_pretrained(model_dir).eval()
    plan = _plan(config)
    batches = [(mb.input_ids, mb.attention_mask) for u in range(plan.num_units) for mb in plan.unit(u).batches]
    layers = model.model.decoder.layers
    ngram_layers = [int(x) for x in config.ngram_layers]
    return plain_record(model, {i: layer.fc1 for i, layer in enumerate(layers)}, batches,
                        max_positions=config.seq_len, threshold=config.threshold, count_bos=config.count_bos,
                        ngram_layers=ngram_layers, orders=config.orders, pack_bits=16)


def _assert_equal_counts(path, ref, layers, ngram_layers, orders):
    assert plain_differences(path, ref) == []
    with open_counts(path) as counts:
        assert counts.complete
        assert counts.layers == layers and counts.ngram_layers == ngram_layers and counts.ngram_orders == orders
        assert counts.domain_tokens.sum() == ref.tokens
        assert counts.domain_active(layers[0]).sum(axis=0).tolist() == ref.active[layers[0]].tolist()


@pytest.mark.parametrize("pre_ln", [True, False])
def test_record_equals_plain_reference(tmp_path, corpus, pre_ln):
    model = _opt(tmp_path, "opt", pre_ln=pre_ln)
    config = _config(model, corpus, tmp_path / "counts.h5")
    runner.record(config, log=lambda *a: None)
    ref = _reference(config, model)
    assert ref.tokens > 0 and any(ref.active[0] == 0) and any(ref.active[0] > 0)
    _assert_equal_counts(config.out, ref, [0, 1, 2], [0, 1], [1, 2, 3])
    ref.active[1][3] += 1  # the comparison names what differs
    ref.ngram_active[(0, 2)][2][0] += 1
    assert plain_differences(config.out, ref) == ["active[1]", "ngram_active[0,2].count"]


def test_full_length_small_batches_and_count_bos(tmp_path, corpus):
    model = _opt(tmp_path, "opt", layers=2, seed=1)
    config = _config(model, corpus, tmp_path / "c.h5", full_length=True, seq_len=32, batch_size=1,
                     unit_batches=3, count_bos=True, ngram_layers=["1"], orders=[1, 3], commit_seconds=0.001,
                     compress_runs=True)
    runner.record(config, log=lambda *a: None)
    ref = _reference(config, model)
    _assert_equal_counts(config.out, ref, [0, 1], [1], [1, 3])
    with open_counts(config.out) as counts:
        assert (counts.pos_seen[counts.pos_seen > 0] == counts.pos_seen[0]).all()  # every sequence full length


@pytest.mark.parametrize("ngrams", ["exact", "bounded"])
def test_interrupted_run_resumes_to_identical_counts(tmp_path, corpus, monkeypatch, ngrams):
    model = _opt(tmp_path, "opt")
    full = _config(model, corpus, tmp_path / "full.h5", ngrams=ngrams)
    runner.record(full, log=lambda *a: None)

    part = _config(model, corpus, tmp_path / "part.h5", ngram_memory="1K", ngrams=ngrams)  # exact: spills often
    interrupt_after_commits(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        runner.record(part, log=lambda *a: None)
    monkeypatch.undo()  # commits work again
    with open_counts(part.out) as counts:
        assert not counts.complete and counts.units_held == 2
    with pytest.raises(StoreError, match="exists"):
        runner.record(part, log=lambda *a: None)
    part.resume = True
    runner.record(part, log=lambda *a: None)
    assert_same_store(full.out, part.out)


def test_token_id_corpus_records_without_a_tokenizer(tmp_path):
    """A checkpoint without tokenizer files records pre-tokenized ids (same counts, ids shown for texts)."""
    model = _opt(tmp_path, "opt", layers=2)
    bare = tmp_path / "bare"
    OPTForCausalLM.from_pretrained(model).save_pretrained(bare)  # weights and config only
    tokenizer = gpt2_tokenizer()
    ids_file = tmp_path / "ids.jsonl"
    ids_file.write_text("".join(json.dumps([50256] + tokenizer(text)["input_ids"]) + "\n"
                                for text in (TEXT_A, TEXT_B[:200], TEXT_B)))
    with_tokenizer = _config(model, [str(ids_file)], tmp_path / "a.h5", ngram_layers=["1"], full_length=True)
    without = _config(bare, [str(ids_file)], tmp_path / "b.h5", ngram_layers=["1"], full_length=True)
    runner.record(with_tokenizer, log=lambda *a: None)
    runner.record(without, log=lambda *a: None)
    assert_same_store(with_tokenizer.out, without.out)
    with open_counts(without.out) as counts:
        assert counts.vocab is None and counts.complete
    text = tmp_path / "t.txt"
    text.write_text(TEXT_A)
    with pytest.raises(ValueError, match="--tokenizer"):
        runner.record(_config(bare, [str(text)], tmp_path / "c.h5"), log=lambda *a: None)


@pytest.mark.parametrize("ngrams", ["exact", "bounded"])  # bounded: summaries that cut nothing add exactly
def test_shards_merge_to_the_single_run(tmp_path, corpus, ngrams):
    model = _opt(tmp_path, "opt")
    full = _config(model, corpus, tmp_path / "full.h5", ngrams=ngrams)
    runner.record(full, log=lambda *a: None)
    shards = []
    for i in range(3):
        shard = _config(model, corpus, tmp_path / f"s{i}.h5", shard=f"{i}/3", ngrams=ngrams)
        runner.record(shard, log=lambda *a: None)
        shards.append(shard.out)
    merged = merge_stores(shards, tmp_path / "merged.h5", ngram_memory=1 << 20)
    assert_same_store(full.out, merged)
    with pytest.raises(StoreError, match="disjoint"):
        merge_stores([shards[0], merged], tmp_path / "twice.h5", ngram_memory=1 << 20)
    other = _config(model, corpus, tmp_path / "other.h5", threshold=0.5, ngrams=ngrams)
    runner.record(other, log=lambda *a: None)
    with pytest.raises(StoreError, match="threshold"):
        merge_stores([full.out, other.out], tmp_path / "bad.h5", ngram_memory=1 << 20)


def test_merge_of_different_corpora_keeps_domains_apart(tmp_path, corpus):
    model = _opt(tmp_path, "opt", layers=2)
    a = _config(model, corpus[:1], tmp_path / "a.h5")
    b = _config(model, corpus[1:], tmp_path / "b.h5")
    runner.record(a, log=lambda *a: None)
    runner.record(b, log=lambda *a: None)
    merged = merge_stores([a.out, b.out], tmp_path / "ab.h5", ngram_memory=1 << 20)
    with open_counts(a.out) as x, open_counts(b.out) as y, open_counts(merged) as m:
        assert m.domains == x.domains + y.domains
        assert m.tokens == x.tokens + y.tokens
        np.testing.assert_array_equal(m.active(1), x.active(1) + y.active(1))
        np.testing.assert_array_equal(m.domain_active(1), np.concatenate([x.domain_active(1), y.domain_active(1)]))


def test_resume_refuses_other_settings_and_corrupt_files(tmp_path, corpus):
    model = _opt(tmp_path, "opt", layers=2)
    config = _config(model, corpus, tmp_path / "c.h5")
    runner.record(config, log=lambda *a: None)
    changed = _config(model, corpus, config.out, resume=True, batch_size=2)
    with pytest.raises(StoreError, match="batch_size"):
        runner.record(changed, log=lambda *a: None)
    with open_counts(config.out) as counts:
        threads = counts.metadata["torch_threads"]
    said = []
    runner.record(_config(model, corpus, config.out, resume=True, threads=threads), log=said.append)
    assert not any("warning" in line for line in said)
    try:
        runner.record(_config(model, corpus, config.out, resume=True, threads=threads + 1), log=said.append)
    finally:
        torch.set_num_threads(threads)  # record() pins the count for the rest of the process
    assert any(f"torch_threads {threads} -> {threads + 1}" in line for line in said)
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(StoreError, match="not an HDF5"):
        runner.record(_config(model, corpus, bad, resume=True), log=lambda *a: None)
    with pytest.raises(StoreError, match="not an HDF5"):
        open_counts(bad)


def test_bad_input_errors(tmp_path, corpus):
    model = _opt(tmp_path, "opt", layers=2)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="(?i)empty|no sequences|no tokens"):
        runner.record(_config(model, [str(empty)], tmp_path / "e.h5"), log=lambda *a: None)
    with pytest.raises(ValueError, match="layers"):
        runner.record(_config(model, corpus, tmp_path / "l.h5", layers=[5]), log=lambda *a: None)
    with pytest.raises(ValueError, match="seq-len"):
        runner.record(_config(model, corpus, tmp_path / "s.h5", seq_len=4096), log=lambda *a: None)
    ids = tmp_path / "ids.jsonl"
    ids.write_text("[2, 5, 99999999]\n")
    with pytest.raises(ValueError, match="99999999"):
        runner.record(_config(model, [str(ids)], tmp_path / "i.h5"), log=lambda *a: None)
    assert not (tmp_path / "i.h5").exists()


def test_nan_weights_stop_with_a_clear_error_and_lose_nothing(tmp_path, corpus):
    model_dir = _opt(tmp_path, "opt", layers=2)
    model = OPTForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.model.decoder.layers[1].fc1.weight[3, 0] = float("nan")
    model.save_pretrained(model_dir)
    with pytest.raises(runner.RecordingError, match="NaN"):
        runner.record(_config(model_dir, corpus, tmp_path / "n.h5"), log=lambda *a: None)
    with open_counts(tmp_path / "n.h5") as counts:
        assert counts.units_held == 0 and not counts.complete


def test_kill_9_mid_run_then_resume(tmp_path):
    """A real `fastneurons record` process killed with SIGKILL mid-run resumes to identical counts."""
    model = _opt(tmp_path, "opt", layers=3)
    big = tmp_path / "big.txt"
    big.write_text((TEXT_A + TEXT_B) * 10)  # about a hundred units: the run lasts long enough to be hit
    corpus = [str(big)]
    full = _config(model, corpus, tmp_path / "full.h5", unit_batches=1, batch_size=2)
    runner.record(full, log=lambda *a: None)
    out = tmp_path / "killed.h5"
    args = [sys.executable, "-m", "fastneurons.cli", "record", "--model", str(model), "--corpus", *corpus,
            "--out", str(out), "--seq-len", "48", "--batch-size", "2", "--unit-batches", "1",
            "--ngram-layers", "0", "1", "--no-progress", "--commit-seconds", "0"]
    kill_when_units_held(args, out, 3, tmp_path)
    with open_counts(out) as counts:
        assert not counts.complete
        assert 3 <= counts.units_held < len(counts.header.corpora[0].units)
    resumed = subprocess.run(args + ["--resume"], capture_output=True, text=True, env=PACKAGE_ENV, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_store(full.out, out)


LIMITED = """import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2)
from fastneurons.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file size limits")
def test_failed_writes_lose_nothing_and_resume_to_identical_counts(tmp_path):
    """Real failed writes (a file-size limit makes HDF5's writes fail as on a full disk) at several
    points of a run: a clear error, exit code 2, no temporary file left, and --resume finishes to the
    counts of an uninterrupted run."""
    model = _opt(tmp_path, "opt", layers=3)
    big = tmp_path / "big.txt"
    big.write_text((TEXT_A + TEXT_B) * 4)
    full = _config(model, [str(big)], tmp_path / "full.h5", unit_batches=1, batch_size=2)
    runner.record(full, log=lambda *a: None)
    size = (tmp_path / "full.h5").stat().st_size
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(fastneurons.__file__))))
    partial = 0
    for i, fraction in enumerate((0.3, 0.9, 0.95, 0.99)):  # fails creating the store, then later commits
        out = tmp_path / f"limited{i}.h5"
        args = [sys.executable, "-c", LIMITED, str(int(size * fraction)), "record", "--model", str(model),
                "--corpus", str(big), "--out", str(out), "--seq-len", "48", "--batch-size", "2",
                "--unit-batches", "1", "--ngram-layers", "0", "1", "--no-progress", "--commit-seconds", "0"]
        done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 2, done.stderr[-2000:]
        assert re.search(f"cannot write {re.escape(str(out))}", done.stderr), done.stderr[-2000:]
        assert "File too large" in done.stderr and "nothing committed was lost" in done.stderr
        assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.runs/*.tmp"))
        created = out.exists()  # else the very first snapshot failed
        runner.record(dataclasses.replace(full, out=str(out), resume=True), log=lambda *a: None)
        assert_same_store(full.out, out)
        if created:
            partial += 1
            break
    assert partial >= 1  # at least one limit let the store be created and failed later


def test_torchrun_ranks_become_shards_with_their_own_files():
    config = RecordConfig(model="m", corpus=["c.txt"], out="counts-{rank}.h5")
    ranked = runner.apply_torchrun(config, {"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"})
    assert ranked.shard == "2/4" and ranked.out == "counts-2.h5"
    assert runner.apply_torchrun(config, {}) is config
    with pytest.raises(ValueError, match="rank"):
        runner.apply_torchrun(RecordConfig(model="m", corpus=["c.txt"], out="c.h5"), {"WORLD_SIZE": "2"})


class _Bars:
    """Stands in for tqdm: records what each bar was given (totals, ticks, wrapped items)."""

    made = []

    def __init__(self, items=None, total=None, desc=None, **kwargs):
        self.items, self.total, self.desc, self.ticks = items, total, desc, []
        _Bars.made.append(self)

    def __iter__(self):
        return iter(self.items)

    def update(self, n):
        self.ticks.append(n)

    def set_postfix_str(self, text):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


@pytest.mark.parametrize("shown", [True, False])
def test_progress_ticks_per_micro_batch_and_the_merge_shows_its_tables(tmp_path, corpus, monkeypatch, shown):
    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", _Bars)
    _Bars.made = []
    model = _opt(tmp_path, "opt", layers=2)
    config = _config(model, corpus, tmp_path / "c.h5", commit_seconds=60, progress=shown, ngrams="exact")
    runner.record(config, log=lambda *a: None)
    ours = [bar for bar in _Bars.made if bar.desc in ("record", "merge n-grams")]  # not transformers' own bars
    if not shown:
        assert ours == []
        return
    record_bar, merge_bar = ours
    plan = _plan(config)
    batches = [mb for u in range(plan.num_units) for mb in plan.unit(u).batches]
    assert record_bar.desc == "record" and merge_bar.desc == "merge n-grams"
    assert record_bar.ticks == [mb.num_tokens for mb in batches]
    assert sum(record_bar.ticks) == record_bar.total and len(batches) > plan.num_units
    assert len(merge_bar.items) == 2 * 3 + 3  # (layer, k) tables and seen


def test_commits_wait_longer_when_they_are_slow():
    """A commit that took w seconds is followed by at least w / COMMIT_SHARE of recording; 0 stays 0."""
    assert runner._next_wait(60.0, 0.5) == 60.0
    assert runner._next_wait(60.0, 10.0) == pytest.approx(10.0 / runner.COMMIT_SHARE)
    assert runner._next_wait(0.0, 10.0) == 0.0  # --commit-seconds 0: after every unit


def test_summaries_made_on_the_device_equal_the_host_ones_and_resume_either_way(tmp_path, corpus, monkeypatch):
    """--summary-kernels device (torch ops; here on the CPU) records the host's store, bit for bit, with
    cuts and folds mid-run, and a run interrupted on one resumes on the other to the same store."""
    from fastneurons.ngrams import bounded
    from fastneurons.recording.device_summaries import DeviceSummaryAccumulator
    from fastneurons.store import summaries as stored
    monkeypatch.setattr(bounded, "FOLD_EVENTS", 2000)
    model = _opt(tmp_path, "opt")
    settings = dict(summary_capacity=3, ngram_layers=["0", "2"])
    host = _config(model, corpus, tmp_path / "host.h5", summary_kernels="host", **settings)
    runner.record(host, log=lambda *a: None)
    device = _config(model, corpus, tmp_path / "device.h5", summary_kernels="device", **settings)
    calls = []  # a snapshot brings one layer's summaries to the host, writes them, then the next layer's
    with monkeypatch.context() as patch:
        state, write = DeviceSummaryAccumulator.state, stored.write_summaries
        patch.setattr(DeviceSummaryAccumulator, "state", lambda self: (calls.append("state"), state(self))[1])
        patch.setattr(stored, "write_summaries", lambda f, summaries, *args: (
            calls.append(sorted({layer for layer, _ in summaries})), write(f, summaries, *args))[1])
        runner.record(device, log=lambda *a: None)
    assert len(calls) >= 8 and calls == ["state", [0], "state", [2]] * (len(calls) // 4)
    with h5py.File(host.out, "r") as f:  # the summaries were cut: the prune and pass 2 were exercised
        assert all(f[f"summaries/layer{layer}/k{k}/delta"][()].any() for layer in (0, 2) for k in (1, 2, 3))
    assert_same_datasets(host.out, device.out, STORE_GROUPS)
    part = _config(model, corpus, tmp_path / "part.h5", summary_kernels="device", **settings)
    with monkeypatch.context() as patch:
        interrupt_after_commits(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            runner.record(part, log=lambda *a: None)
    part.resume, part.summary_kernels = True, "host"
    runner.record(part, log=lambda *a: None)
    assert_same_datasets(host.out, part.out, STORE_GROUPS)
