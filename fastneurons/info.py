"""What this installation of fastneurons can run on: version, compiled backends, threads, GPUs."""

from __future__ import annotations

import sys
import types


def describe() -> dict:
    """Return a dict describing the package version, compiled kernels, CPU threads and visible GPUs."""
    import torch

    import fastneurons

    result = {
        "version": fastneurons.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else [],
    }
    try:
        from fastneurons.kernels import load_extension

        compiled = dict(load_extension().info())
        result["kernels_built"] = True
    except ImportError as error:
        compiled = {"backends": [], "error": str(error)}
        result["kernels_built"] = False
    result["backends"] = list(compiled.pop("backends"))
    result.update({f"kernel_{key}": value for key, value in compiled.items()})
    return result


def format_info() -> str:
    """Return ``describe()`` as aligned ``key: value`` lines for the CLI."""
    info = describe()
    width = max(len(key) for key in info)
    lines = []
    for key, value in info.items():
        if isinstance(value, (list, tuple)):
            value = ", ".join(str(item) for item in value) or "none"
        lines.append(f"{key.ljust(width)}  {value}")
    return "\n".join(lines)


class _CallableModule(types.ModuleType):
    """``fastneurons.info`` is both this module and the function ``describe``: importing the module
    replaces the package attribute, so the module itself answers ``fastneurons.info()``."""

    def __call__(self) -> dict:
        return describe()


sys.modules[__name__].__class__ = _CallableModule
