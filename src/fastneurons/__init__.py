"""fastneurons: profile every FFN neuron of a Hugging Face LLM (dead, n-gram and positional neurons).

``import fastneurons`` never needs the compiled kernels; they are loaded on first use.
"""

from __future__ import annotations

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("fastneurons")
except _metadata.PackageNotFoundError:  # running from a source checkout that was never installed
    __version__ = "0.1.0"

__all__ = ["__version__", "NeuronCounter", "attach_counters", "info"]

_LAZY = {
    "NeuronCounter": ("fastneurons.recording.counter", "NeuronCounter"),
    "attach_counters": ("fastneurons.recording.counter", "attach_counters"),
    "info": ("fastneurons.info", None),  # the module itself, callable: info() == info.describe()
}


def __getattr__(name):
    """Import the public objects on first access, so that ``import fastneurons`` stays light."""
    if name in _LAZY:
        import importlib

        module_name, attribute = _LAZY[name]
        module = importlib.import_module(module_name)
        value = module if attribute is None else getattr(module, attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastneurons' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
