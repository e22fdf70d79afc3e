"""glibc's malloc set for a CPU forward: freed activation buffers are reused, not page-faulted in anew.

A forward on the CPU allocates and frees the same activation buffers (megabytes to tens of megabytes)
in every batch. With glibc's defaults the mmap threshold moves with what was last freed and the top
of the heap is given back to the system past a trim threshold, so from batch to batch many of those
buffers come back as fresh pages: on OPT-125m's shape (batches of 2 x 512 tokens, two threads) 0.26 to
2.4 million page faults per 32k tokens, a different number in every process, against ~20k when they
are kept (benchmarks/README.md, "The bare forward's page faults"). Fixing the mmap threshold at its
largest value (32 MiB) and never trimming the heap keeps those pages: the resident memory stays at
its high-water mark instead of falling between batches, and nothing else changes (no result depends
on it). ``record`` and ``second-pass`` set it when they run on the CPU, and the benchmark sets it for
every method it times, the bare forward included, so that all of them are measured alike.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest (HEAP_MAX_SIZE / 2 on 64-bit): larger requests are mmapped
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int: the heap's top is kept up to 2 GiB


@functools.lru_cache(maxsize=None)
def _libc():
    """The C library if it is glibc (it has ``mallopt`` and ``gnu_get_libc_version``), else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version, libc.mallopt  # noqa: B018 - both exist only in glibc
    except (OSError, AttributeError, TypeError):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return libc


def hold_freed_memory() -> dict | None:
    """Fix malloc's mmap threshold at 32 MiB and stop heap trimming, for the rest of the process.

    Returns the settings glibc accepted ({"mmap_threshold": bytes, "trim_threshold": bytes}), or None
    where the C library is not glibc (macOS, musl): there nothing is changed."""
    libc = _libc()
    if libc is None:
        return None
    accepted = {}
    for name, param, value in (("mmap_threshold", M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                               ("trim_threshold", M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if libc.mallopt(param, value) == 1:
            accepted[name] = value
    return accepted
