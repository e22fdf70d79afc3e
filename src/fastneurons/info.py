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
        "torch_cuda": torch.version.cuda or "none (CPU build)",
    }
    try:
        from fastneurons.kernels import load_extension

        compiled = dict(load_extension().info())
        result["kernels_built"] = True
    except ImportError as error:
        compiled = {"backends": [], "error": str(error)}
        result["kernels_built"] = False
    result["backends"] = list(compiled.pop("backends"))
    result.update(describe_cuda(compiled, torch.version.cuda, _visible_gpus()))
    result.update({f"kernel_{key}": value for key, value in compiled.items()})
    return result


def _visible_gpus() -> list:
    """(name, compute capability as 10 * major + minor) of each GPU torch sees."""
    import torch

    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(index)
        gpus.append((torch.cuda.get_device_name(index), 10 * major + minor))
    return gpus


def describe_cuda(compiled: dict, torch_cuda, gpus) -> dict:
    """The CUDA lines of ``describe()``: _C's runtime, the driver, each GPU with its compute capability and
    whether _C has a kernel image for it, and what does not fit together ("cuda_problem"). ``compiled`` is
    ``_C.info()`` (its CUDA keys are taken out), ``gpus`` [(name, capability)]."""
    from fastneurons.kernels import cuda_build_problem, cuda_device_problem, cuda_version_text, has_kernel_image

    runtime = compiled.pop("cuda_runtime_version", None)
    driver = compiled.pop("cuda_driver_version", None)
    architectures = compiled.pop("cuda_architectures", None)
    compiled.pop("cuda_device_capabilities", None)
    result = {
        "kernel_cuda_runtime": cuda_version_text(runtime) if runtime else "none (_C built without CUDA)",
        "kernel_cuda_compiler": compiled.pop("cuda_compiler_version", None) or "none",
        "kernel_cuda_architectures": architectures or "none",
        "cuda_driver": cuda_version_text(driver) if driver else "none",
    }
    lines, problems = [], []
    for index, (name, capability) in enumerate(gpus):
        image = has_kernel_image(capability, architectures) if architectures else False
        fits = {True: "kernel image: yes", False: "kernel image: NO", None: "kernel image: unknown"}[image]
        lines.append(f"cuda:{index} {name} (compute {capability // 10}.{capability % 10}, {fits})")
        if architectures:
            problems.append(cuda_device_problem(capability, architectures))
    result["gpus"] = lines
    if gpus and runtime:
        problems.insert(0, cuda_build_problem(runtime, driver, torch_cuda))
    result["cuda_problem"] = "; ".join(p for p in problems if p) or "none"
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
            "ngram_mode": _ngram_mode(counts),
            "positions": f"{counts.max_positions} (pos_active recorded)" if counts.has_positions
            else f"{counts.max_positions} (no pos_active)",
            "seq_len": meta.get("seq_len"),
            "full_length": meta.get("full_length"),
            "domains": [f"{label} ({int(t)} tokens)" for label, t in zip(counts.domains, counts.domain_tokens)],
            "size": f"{os.path.getsize(path) / 2**20:.1f} MiB",
        }


def _ngram_mode(counts) -> str:
    """'exact', or 'bounded' with its capacity and whether the second pass ran."""
    if counts.ngram_mode == "exact":
        return "exact"
    done = {"done": "second pass done", "not needed": "second pass not needed (nothing to count)",
            "not run": "second pass not run (fastneurons second-pass)"}[counts.second_pass_state]
    unigrams = counts.metadata.get("unigram_capacity")
    capacity = counts.metadata.get("summary_capacity")
    return f"bounded (summary capacity {capacity}{f', k = 1: {unigrams}' if unigrams else ''}; {done})"


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
