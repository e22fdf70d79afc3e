"""Shared test helpers: the `device` fixture runs a test on the CPU and, when one is visible, on CUDA.

CUDA cases (marker `cuda`) are skipped when torch sees no GPU, unless FASTNEURONS_REQUIRE_CUDA=1: then
they fail, so a CPU-only torch on a GPU machine cannot pass for a green GPU run.
"""

import os
import signal
import sys

import pytest
import torch

REQUIRE_CUDA = "FASTNEURONS_REQUIRE_CUDA"


def cuda_required(environ=os.environ) -> bool:
    """Whether the environment demands that CUDA cases run (FASTNEURONS_REQUIRE_CUDA=1)."""
    return environ.get(REQUIRE_CUDA, "").strip() not in ("", "0")


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: the test needs a CUDA device (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() or cuda_required():
        return
    skip = pytest.mark.skip(reason="no CUDA device visible")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


def pytest_runtest_setup(item):
    if item.get_closest_marker("cuda") is not None and cuda_required() and not torch.cuda.is_available():
        pytest.fail(f"{REQUIRE_CUDA}=1 but torch sees no CUDA device (torch {torch.__version__}, "
                    f"CUDA {torch.version.cuda or 'none'})", pytrace=False)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    """A torch.device: 'cpu' always, 'cuda' when torch sees a GPU (the CUDA case is skipped otherwise)."""
    return torch.device(request.param)


_SESSION_SIGINT = signal.getsignal(signal.SIGINT)  # Python's default_int_handler under pytest


@pytest.fixture(autouse=True)
def _sigint_handler_restored(request):
    """Every test starts with the SIGINT handler the session started with: one left behind by an
    earlier test, fixture or library is named on stderr and undone, so the signal tests do not
    depend on the order the tests run in."""
    now = signal.getsignal(signal.SIGINT)
    if now is not _SESSION_SIGINT:
        print(f"\nbefore {request.node.nodeid}: SIGINT handler was {now!r}; restored", file=sys.stderr)
        signal.signal(signal.SIGINT, _SESSION_SIGINT)
    yield
