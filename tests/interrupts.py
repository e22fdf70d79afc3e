"""Interrupting a recording in tests: a Ctrl-C after the n-th commit, or SIGKILL of a real `record` process."""
import os
import signal
import subprocess
import time

import h5py

from fastneurons.recording import runner

import fastneurons

# subprocesses run the package under test (installed, or this source tree with its built _C)
PACKAGE_ENV = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(fastneurons.__file__))))


def interrupt_after_commits(monkeypatch, n: int) -> None:
    """Make the n-th ``CountsWriter.commit`` raise KeyboardInterrupt once it has committed."""
    original, commits = runner.CountsWriter.commit, {"n": 0}

    def failing_commit(self, *args, **kwargs):
        original(self, *args, **kwargs)
        commits["n"] += 1
        if commits["n"] == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner.CountsWriter, "commit", failing_commit)


def wait_for_units(proc, out, units: int, timeout: float = 300) -> None:
    """Wait until the store ``out`` that ``proc`` records holds ``units`` units; fails if it ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            with h5py.File(out, "r") as f:
                if int(f["corpora/0/units"][()].sum()) >= units:
                    return
        except (OSError, KeyError):
            pass
        time.sleep(0.01)
    stderr = proc.stderr.read()[-2000:] if proc.poll() is not None else ""
    raise AssertionError(f"the recording ended or stalled before {units} units: {proc.poll()} {stderr}")


def kill_when_units_held(args, out, units: int, cwd, *, settle: float = 0.0, timeout: float = 180) -> None:
    """Start ``args`` (a record command), SIGKILL it once the store ``out`` holds ``units`` units (after
    ``settle`` more seconds), and wait for it; fails if it ended before."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=PACKAGE_ENV, cwd=cwd)
    wait_for_units(proc, out, units, timeout)
    time.sleep(settle)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
