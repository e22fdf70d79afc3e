"""Fault injection on real `fastneurons record` processes: file-size limits (a full disk) at a run
write and at a compaction, damaged and missing run files, SIGINT / SIGTERM mid-run, two writers on one
store and a reader during a write. Each case checks the exit code, the one-line message, the store's
bytes and that a resume gives exactly the counts of an uninterrupted run.

Small on purpose: a 2-layer OPT with a 512-id vocabulary built from its config, ~350 token ids.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM

import fastneurons
from fastneurons.config import RecordConfig
from fastneurons.info import describe_store
from fastneurons.recording import runner
from fastneurons.store import StoreError, StoreLock, open_counts, runs_dir
from interrupts import wait_for_units
from same_counts import assert_same_store

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX signals and file size limits")

SRC = os.path.dirname(os.path.dirname(os.path.abspath(fastneurons.__file__)))
ENV = dict(os.environ, PYTHONPATH=SRC)
# a file-size limit makes writes fail with EFBIG, exactly like a full disk (SIGXFSZ ignored)
LIMITED = """import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2)
from fastneurons.cli import main
sys.exit(main(sys.argv[2:]))
"""
# a run holds ~100 KB of n-gram rows and a snapshot ~25 KB: 50 KB fails the first run write, 500 KB the
# compaction of 17 runs (~1.5 MB) after 16 commits
RUN_FAILS, COMPACTION_FAILS = 50_000, 500_000


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(model dir, corpus file, uninterrupted reference store, tmp dir)."""
    root = tmp_path_factory.mktemp("faults")
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=512, hidden_size=16, num_hidden_layers=2, ffn_dim=256, num_attention_heads=2,
                       max_position_embeddings=64, word_embed_proj_dim=16, bos_token_id=2, eos_token_id=2,
                       pad_token_id=1)
    OPTForCausalLM(config).eval().save_pretrained(root / "opt")
    rng = np.random.default_rng(0)
    corpus = root / "ids.jsonl"
    corpus.write_text("".join(json.dumps([2] + rng.integers(3, 512, 60).tolist()) + "\n" for _ in range(6)))
    reference = root / "full.h5"
    runner.record(_config(root / "opt", corpus, reference), log=lambda *a: None)
    return root / "opt", corpus, reference, root


@pytest.fixture(scope="module")
def exact_setup(setup):
    """``setup`` with the reference recorded in the exact n-gram mode (whose run files these faults hit)."""
    model, corpus, _, root = setup
    reference = root / "full-exact.h5"
    runner.record(_config(model, corpus, reference, ngrams="exact"), log=lambda *a: None)
    return model, corpus, reference, root


EXACT = ("--ngrams", "exact")


def _config(model, corpus, out, **overrides):
    values = dict(model=str(model), corpus=[str(corpus)], out=str(out), seq_len=16, full_length=True,
                  batch_size=1, unit_batches=1, ngram_layers=["0", "1"], orders=[1], positions=False,
                  commit_seconds=0, threads=1, progress=False)
    return RecordConfig(**{**values, **overrides})


def _args(setup, out, *extra):
    model, corpus, _, _ = setup
    return ["record", "--model", str(model), "--corpus", str(corpus), "--out", str(out), "--seq-len", "16",
            "--full-length", "--batch-size", "1", "--unit-batches", "1", "--ngram-layers", "0", "1", "--orders", "1",
            "--no-positions", "--commit-seconds", "0", "--threads", "1", "--no-progress", *extra]


def _run(args, limit=None):
    command = [sys.executable, "-c", LIMITED, str(limit)] if limit else [sys.executable, "-m", "fastneurons.cli"]
    return subprocess.run(command + args, capture_output=True, text=True, env=ENV, timeout=600)


def _one_error_line(stderr: str, command="record") -> str:
    lines = [line for line in stderr.splitlines() if line.startswith(f"fastneurons {command}:")]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]
    return lines[0]


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _resume(setup, out, **overrides):
    model, corpus, _, _ = setup
    runner.record(_config(model, corpus, out, resume=True, **overrides), log=lambda *a: None)


def test_failed_run_write_is_one_line_exit_2_and_resumes_exactly(exact_setup):
    setup = exact_setup
    out = setup[3] / "run-fails.h5"
    done = _run(_args(setup, out, *EXACT), limit=RUN_FAILS)
    assert done.returncode == 2, done.stderr[-3000:]  # was a segfault (139) after h5py dealloc tracebacks
    line = _one_error_line(done.stderr)
    assert f"cannot write {runs_dir(out)}/run-000001.h5: File too large" in line and "nothing committed was lost" in line
    assert not list(runs_dir(out).glob("*")) and not out.with_name(out.name + ".lock").exists()
    _resume(setup, out, ngrams="exact")
    assert_same_store(setup[2], out)


def test_failed_compaction_then_lost_runs_then_rerecorded_exactly(exact_setup):
    setup = exact_setup
    out = setup[3] / "compaction-fails.h5"
    done = _run(_args(setup, out, *EXACT), limit=COMPACTION_FAILS)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "cannot write" in _one_error_line(done.stderr) and "run-000018.h5: File too large" in done.stderr
    with open_counts(out) as counts:
        assert counts.units_held == 16 and not counts.lost_runs
        pending = list(counts._pending)
    # one run lost, one cut off: a resume refuses before any work, naming them and the way out
    (runs_dir(out) / pending[2]).unlink()
    damaged = runs_dir(out) / pending[6]
    damaged.write_bytes(damaged.read_bytes()[:20_000])
    before = _digest(out)
    state = describe_store(out)["state"]
    assert f"{pending[2]} (missing)" in state and f"{pending[6]} (damaged" in state and "--rerecord-lost-runs" in state
    done = _run(_args(setup, out, *EXACT, "--resume"))
    assert done.returncode == 2
    line = _one_error_line(done.stderr)
    assert pending[2] in line and pending[6] in line and "--rerecord-lost-runs" in line and "2 units" in line
    assert "recording" not in done.stdout and _digest(out) == before  # nothing loaded, nothing written
    with pytest.raises(StoreError, match="--rerecord-lost-runs"):
        with open_counts(out) as counts:
            counts.ngram_seen(1)
    _resume(setup, out, rerecord_lost_runs=True, ngrams="exact")  # those 2 units' n-grams again, then the rest
    assert_same_store(setup[2], out)


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_signal_mid_run_stops_cleanly_and_resumes_exactly(setup, signum, code, word):
    out = setup[3] / f"signal-{signum}.h5"
    proc = subprocess.Popen([sys.executable, "-m", "fastneurons.cli", *_args(setup, out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    wait_for_units(proc, out, 3)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == code, stderr[-3000:]
    assert word in _one_error_line(stderr) and not out.with_name(out.name + ".lock").exists()
    assert not list(setup[3].glob("*.tmp")) and not list(runs_dir(out).glob("*.tmp"))
    with open_counts(out) as counts:
        assert 3 <= counts.units_held < len(counts.header.corpora[0].units)
        assert counts.metadata["torch_threads"] == 1  # --threads 1 is what ran (numba's start reset it to all)
    _resume(setup, out)
    assert_same_store(setup[2], out)


def test_one_writer_per_store_and_a_reader_during_the_write(setup):
    out = setup[3] / "two-writers.h5"
    first = subprocess.Popen([sys.executable, "-m", "fastneurons.cli", *_args(setup, out)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=ENV)
    wait_for_units(first, out, 2)
    first.send_signal(signal.SIGSTOP)  # holds the store (and its lock) mid-run while the others try
    try:
        with pytest.raises(StoreError, match=f"being written by pid {first.pid} "):
            StoreLock(out).acquire()
        second = _run(_args(setup, out, "--resume"))
        assert second.returncode == 2
        assert f"being written by pid {first.pid} " in _one_error_line(second.stderr)
        fresh = _run(_args(setup, out))
        assert fresh.returncode == 2 and f"pid {first.pid}" in _one_error_line(fresh.stderr)
        info = describe_store(out)  # a reader gets the last snapshot, and who is writing it
        assert info["state"].startswith(f"partial, being written by pid {first.pid} ")
        with open_counts(out) as counts:
            assert counts.units_held >= 2 and counts.ngram_seen(1)[1].sum() > 0
    finally:
        first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-3000:]
    assert_same_store(setup[2], out)
    with StoreLock(out):  # free again once the writer is done
        pass
