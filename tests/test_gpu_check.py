"""benchmarks/gpu_check.sh in its CPU mode (what CI runs): it runs the CPU parts, lists what it skipped, and
fails with FASTNEURONS_REQUIRE_CUDA=1 when no GPU is visible. The GPU parts run only on a GPU machine."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script runs its GPU parts")


def run_script(out, *flags, **env):
    environ = {k: v for k, v in os.environ.items() if k != "FASTNEURONS_REQUIRE_CUDA"}
    environ.update(PYTHON=sys.executable, **env)
    return subprocess.run(["bash", str(SCRIPT), str(out), "--quick", *flags], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=600)


def test_cpu_mode_runs_the_cpu_parts_and_says_what_it_skipped(tmp_path):
    done = run_script(tmp_path, "--skip", "tests")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    table = (tmp_path / "gpu_check.md").read_text()
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    status = {(r["section"], r["check"]): r["status"] for r in rows}
    assert status[("exactness", "random OPT bfloat16: CPU kernel == naive")] == "PASS"
    assert status[("exactness", "planted OPT float16: CPU kernel == naive")] == "PASS"
    skipped = {section for section, _ in (k for k, v in status.items() if v == "SKIP")}
    assert skipped == {"exactness", "kernel", "share", "summaries", "offload", "trace"}
    assert status[("summaries", "F 256, 2 x 512 tokens, 5% active, k = 1, 2, 3: device summaries == host summaries")] \
        == "PASS"
    assert "Skipped: exactness: CUDA counts == CPU kernel" in table and "| SKIP |" in table
    assert not any(r["status"] == "FAIL" for r in rows)


def test_requiring_cuda_without_a_gpu_fails(tmp_path):
    done = run_script(tmp_path, "--skip", "tests", "exactness", "kernel", "share",
                      FASTNEURONS_REQUIRE_CUDA="1")
    assert done.returncode == 1
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert any(r["check"] == "GPU visible" and r["status"] == "FAIL" for r in rows)


def test_pytest_fails_cuda_cases_when_cuda_is_required(tmp_path):
    environ = dict(os.environ, FASTNEURONS_REQUIRE_CUDA="1", PYTHONPATH=str(REPO / "src"))
    done = subprocess.run([sys.executable, "-m", "pytest", "tests/test_kernels.py", "-q", "-p", "no:cacheprovider",
                           "-k", "mixed_devices or read_device_bytes"], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "FASTNEURONS_REQUIRE_CUDA=1 but torch sees no CUDA device" in done.stdout
    environ.pop("FASTNEURONS_REQUIRE_CUDA")
    done = subprocess.run([sys.executable, "-m", "pytest", "tests/test_kernels.py", "-q", "-p", "no:cacheprovider",
                           "-k", "mixed_devices or read_device_bytes"], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "2 skipped" in done.stdout


def test_copy_overlap_from_trace_events():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from gpu_check import copy_overlap
    finally:
        sys.path.pop(0)
    events = [dict(ph="X", cat="gpu_memcpy", name="Memcpy HtoD (Pinned -> Device)", ts=0, dur=10),
              dict(ph="X", cat="gpu_memcpy", name="Memcpy HtoD (Pinned -> Device)", ts=20, dur=10),
              dict(ph="X", cat="gpu_memcpy", name="Memcpy DtoH (Device -> Pinned)", ts=40, dur=50),
              dict(ph="X", cat="kernel", name="gemm", ts=5, dur=20),
              dict(ph="X", cat="kernel", name="count_kernel", ts=24, dur=2)]
    total, share = copy_overlap(events)
    assert total == 20 and share == pytest.approx((5 + 6) / 20)   # kernels merge to [5, 26]
