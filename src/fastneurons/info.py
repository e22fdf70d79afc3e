"""What this installation can run on (version, compiled backends, threads, GPUs), and what a counts
store holds (model, definition, progress, domains) without reading its counters."""

from __future__ import annotations

import os
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
    """Return ``describe()`` as aligned ``key  value`` lines for the CLI."""
    return format_lines(describe())


def describe_store(path) -> dict:
    """What a counts store holds: state, tokens, model and neuron definition, layers, corpus progress."""
    from fastneurons.store import open_counts

    with open_counts(path) as counts:
        meta, header = counts.metadata, counts.header
        units = [int(c.units.sum()) for c in header.corpora]
        planned = [int(c.units.size) for c in header.corpora]
        return {
            "store": str(path),
            "state": _state(path, counts),
            "units": " + ".join(f"{held}/{total}" for held, total in zip(units, planned)),
            "tokens": counts.tokens,
            "model": meta.get("model", {}).get("spec") or meta.get("model", {}).get("path", ""),
            "architecture": meta.get("architecture"),
            "neuron_definition": meta.get("neuron_definition"),
            "neurons_per_layer": counts.num_neurons,
            "layers": _ranges(counts.layers),
            "ngram_layers": _ranges(counts.ngram_layers) or "none",
            "orders": counts.ngram_orders if counts.ngram_layers else "none",
            "positions": f"{counts.max_positions} (pos_active recorded)" if counts.has_positions
            else f"{counts.max_positions} (no pos_active)",
            "seq_len": meta.get("seq_len"),
            "full_length": meta.get("full_length"),
            "domains": [f"{label} ({int(t)} tokens)" for label, t in zip(counts.domains, counts.domain_tokens)],
            "size": f"{os.path.getsize(path) / 2**20:.1f} MiB",
        }


def _state(path, counts) -> str:
    """complete, partial (and how to continue it), or being written (by whom)."""
    from fastneurons.store.lock import writer_of

    if counts.complete:
        return "complete"
    holder = writer_of(path)
    if holder:
        return f"partial, being written by {holder}"
    if counts.lost_runs:
        lost = ", ".join(f"{name} ({problem})" for name, problem in counts.lost_runs.items())
        return f"partial, n-gram runs lost: {lost}; continue it with record --resume --rerecord-lost-runs"
    return "partial (continue it with record --resume)"


def _ranges(values) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    values, parts = sorted(values), []
    for value in values:
        if parts and value == parts[-1][1] + 1:
            parts[-1][1] = value
        else:
            parts.append([value, value])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)


def format_lines(info: dict) -> str:
    """A dict as aligned ``key  value`` lines (lists joined with commas)."""
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
