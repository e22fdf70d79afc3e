"""`torchrun --nproc-per-node N -m fastneurons.cli record ... --out counts.h5` leaves one merged store.

Real torchrun (torch.distributed.run, gloo on the CPU) with 2 and 3 ranks gives exactly the
single-process counts; a rank killed with SIGKILL makes torchrun restart the job (--max-restarts 1),
every rank resumes its shard, and the merged store is still exact.
"""
import os
import signal
import subprocess
import sys
import time
import uuid

import h5py
import pytest

import fastneurons
from fastneurons.config import RecordConfig
from fastneurons.recording import runner
from fastneurons.recording.distributed import shard_path, torchrun_job
from fastneurons.store import open_counts
from same_counts import assert_same_store
import test_runner as opt

QUIET = lambda *args: None  # noqa: E731


def _setup(tmp_path, repeat):
    model = opt._opt(tmp_path, "opt", layers=2)
    text = tmp_path / "text.txt"
    text.write_text((opt.TEXT_A + opt.TEXT_B) * repeat)
    single = opt._config(model, [str(text)], tmp_path / "single.h5", batch_size=2, unit_batches=1)
    runner.record(single, log=QUIET)
    return model, text, single


def _torchrun(tmp_path, model, text, out, ranks, extra=(), marker=""):
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks), *extra,
            "-m", "fastneurons.cli", "record", "--model", str(model), "--corpus", str(text), "--out", str(out),
            "--seq-len", "48", "--batch-size", "2", "--unit-batches", "1", "--ngram-layers", "0", "1",
            "--no-progress", "--commit-seconds", "0", "--threads", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", FASTNEURONS_TEST_JOB=marker,
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(fastneurons.__file__))))
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)


@pytest.mark.parametrize("ranks", [2, 3])
def test_torchrun_leaves_one_store_equal_to_the_single_process_run(tmp_path, ranks):
    model, text, single = _setup(tmp_path, repeat=1)
    out = tmp_path / "counts.h5"
    proc = _torchrun(tmp_path, model, text, out, ranks)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert_same_store(single.out, out)
    with open_counts(out) as counts:
        assert counts.complete
    assert sorted(p.name for p in shard_path(out, 0, ranks).parent.iterdir()) == \
        [f"rank-{r}-of-{ranks}.h5" for r in range(ranks)]


def _worker_pid(marker, rank):
    """The pid of the torchrun worker of `rank` in the job marked `marker` (None until it runs)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if environ.get(b"FASTNEURONS_TEST_JOB") == marker.encode() and environ.get(b"RANK") == str(rank).encode() \
                and b"fastneurons.cli" in cmdline and b"torch.distributed.run" not in cmdline:
            return int(entry)
    return None


def test_a_killed_rank_restarts_the_job_and_every_shard_resumes(tmp_path):
    model, text, single = _setup(tmp_path, repeat=6)
    out = tmp_path / "counts.h5"
    marker = uuid.uuid4().hex
    proc = _torchrun(tmp_path, model, text, out, 2, extra=["--max-restarts", "1"], marker=marker)
    shard = shard_path(out, 1, 2)
    deadline, killed = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None and killed is None:
        try:
            with h5py.File(shard, "r") as f:
                if int(f["corpora/0/units"][()].sum()) >= 2:
                    killed = _worker_pid(marker, 1)
                    if killed is not None:
                        os.kill(killed, signal.SIGKILL)
        except (OSError, KeyError):
            pass
        time.sleep(0.02)
    assert killed is not None, "rank 1 was never caught mid-run"
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert "restart" in stderr.lower() or "Signals.SIGKILL" in stderr or "exitcode" in stderr
    with open_counts(shard) as counts:
        assert counts.complete
    assert_same_store(single.out, out)


def test_torchrun_job_from_the_environment(tmp_path):
    config = RecordConfig(model="m", corpus=["c.txt"], out=str(tmp_path / "counts.h5"))
    job = torchrun_job(config, {"WORLD_SIZE": "3", "RANK": "2", "LOCAL_RANK": "0"})
    assert job.rank_config.shard == "2/3" and job.rank_config.resume is True
    assert job.rank_config.out == str(tmp_path / "counts.h5.shards" / "rank-2-of-3.h5") and job.out == config.out
    assert torchrun_job(config, {}) is None and torchrun_job(config, {"WORLD_SIZE": "1"}) is None
    ranked = RecordConfig(model="m", corpus=["c.txt"], out="counts-{rank}.h5")
    assert torchrun_job(ranked, {"WORLD_SIZE": "2", "RANK": "1"}) is None   # per-rank files, merged by hand
