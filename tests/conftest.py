"""Shared test helpers: the `device` fixture runs a test on the CPU and, when one is visible, on CUDA."""

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: the test needs a CUDA device (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device visible")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    """A torch.device: 'cpu' always, 'cuda' when torch sees a GPU (the CUDA case is skipped otherwise)."""
    return torch.device(request.param)
