"""The CUDA kernels' own code (csrc/cuda/count_kernel.cuh), run on the CPU: each warp as 32 threads meeting
at a barrier for every ballot and shuffle (tests/cuda_emulation/emulate.cpp), against the CPU twin on random
cases: dtypes, widths, every kind of padding, positions past the table, strided rows, 1 to many row chunks.
It checks the kernel's indexing and bookkeeping without a GPU; the real runs are the `cuda` cases."""
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COMPILER = shutil.which("g++")


@pytest.mark.skipif(COMPILER is None, reason="needs g++ (C++20) to build the emulation")
def test_cuda_kernel_code_matches_the_cpu_twin_when_emulated(tmp_path):
    binary = tmp_path / "emulate"
    build = subprocess.run([COMPILER, "-std=c++20", "-O1", "-pthread", f"-I{REPO / 'csrc'}",
                            str(REPO / "tests" / "cuda_emulation" / "emulate.cpp"),
                            str(REPO / "csrc" / "cpu" / "count_cpu.cpp"), "-o", str(binary)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    done = subprocess.run([str(binary), "84"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok 84", done.stdout + done.stderr
