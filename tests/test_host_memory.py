"""host_memory.py: glibc keeps freed buffers for the next batch instead of page-faulting them in anew."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastneurons import host_memory

pytestmark = pytest.mark.skipif(host_memory._libc() is None, reason="the C library is not glibc")

# Eight 8 MiB buffers made and freed, 20 times: a forward's activations in miniature. With glibc's
# defaults the freed top of the heap past the (moving) trim threshold goes back to the system and
# comes back as fresh pages in the next round.
_CYCLES = """
import json, resource, sys
import numpy as np
from fastneurons.host_memory import hold_freed_memory
held = hold_freed_memory() if sys.argv[1] == "held" else None
def cycle():
    buffers = [np.ones(1 << 20) for _ in range(8)]
    del buffers
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    cycle()
print(json.dumps({"held": held, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""
_PAGES_CYCLED = 20 * 64 * 2**20 // 4096


def _cycles(setting: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(host_memory.__file__).parents[1]))
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_"):
        env.pop(name, None)
    out = subprocess.run([sys.executable, "-c", _CYCLES, setting], env=env, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_glibc_accepts_both_settings():
    result = _cycles("held")["held"]
    assert result == {"mmap_threshold": 32 << 20, "trim_threshold": 2**31 - 1}


def test_freed_buffers_are_reused_without_page_faults():
    held = _cycles("held")
    assert held["faults"] < 0.02 * _PAGES_CYCLED, (held, _cycles("default"))  # the defaults, only on failure
