"""Lazy weights: a meta-device skeleton whose decoder layers are read from safetensors when they run.

Host RAM then holds the embeddings, the final norms and one decoder layer whatever the model's size
(SPEC §4). Checkpoint keys are renamed by transformers' own conversion table (the renamings
`from_pretrained` applies, e.g. LayerNorm.gamma -> weight, and the base-model prefix); a checkpoint
that needs a conversion merging or splitting tensors is refused with the reason before any work.
Each layer is read with `safe_open` and the file is closed again, so no mapped page outlives its
layer. `.bin`-only checkpoints are converted once to safetensors (weights_only=True); GGUF files keep
the eager path of loading.py. For `analyze`, `suppression_weights` fills in the same skeleton with only
the tensors suppression reads (down projections, their FFN-output norms, project_out, the unembedding).
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from fastneurons.models import architectures as archs
from fastneurons.models.loading import LoadedModel, _config, _has_tokenizer, _tokenizer, resolve
from fastneurons.models.offload import OffloadPlan

CONVERTED_DIR = "fastneurons-safetensors"   # beside the .bin files: their one-time safetensors copy


class UnsupportedCheckpoint(ValueError):
    """The checkpoint cannot be read lazily (the message says why and what to do)."""


def checkpoint_files(directory: Path, log=print) -> list:
    """The safetensors files of a checkpoint directory, converting `.bin`-only checkpoints once."""
    files = sorted(directory.glob("*.safetensors"))
    if files:
        return files
    bins = sorted(directory.glob("*.bin"))
    if not bins:
        raise UnsupportedCheckpoint(f"{directory} has no *.safetensors or *.bin weights to read lazily")
    target = directory / CONVERTED_DIR
    converted = sorted(target.glob("*.safetensors"))
    if len(converted) == len(bins):
        return converted
    log(f"converting {len(bins)} .bin file(s) of {directory} to safetensors once, into {target} "
        "(torch.load with weights_only=True: no code runs)")
    from safetensors.torch import save_file

    target.mkdir(exist_ok=True)
    for path in bins:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        tensors = {key: value.contiguous().clone() for key, value in state.items()}  # no shared storage
        temporary = target / (path.stem + ".safetensors.tmp")
        save_file(tensors, str(temporary), metadata={"format": "pt"})
        os.replace(temporary, target / (path.stem + ".safetensors"))
        del state, tensors
    return sorted(target.glob("*.safetensors"))


def _skeleton(config, dtype):
    """The real model class built without allocating parameters (buffers are real: rotary tables)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval().requires_grad_(False)


def key_map(model, files) -> dict:
    """{model tensor name: (file, checkpoint key)} through transformers' checkpoint conversion."""
    from safetensors import safe_open
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    others = [t for t in transforms if not isinstance(t, (WeightRenaming, WeightConverter))]
    if others:
        raise UnsupportedCheckpoint(f"{type(model).__name__}: transformers loads it with conversions "
                                    f"{[type(t).__name__ for t in others]} that lazy weights do not support; "
                                    "use --weights eager")
    state = model.state_dict()
    mapping = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
        for key in keys:
            name, converter = rename_source_key(key, renamings, converters, model.base_model_prefix, state)
            if converter is not None:
                raise UnsupportedCheckpoint(f"{path.name}: tensor {key!r} needs transformers' conversion "
                                            f"{converter!r} (tensors merged or split on load), which lazy weights "
                                            "do not support; use --weights eager")
            if name in state:
                mapping[name] = (path, key)
    return mapping


@dataclass
class LazyWeights:
    """Reads decoder layers from safetensors when they run; at most `keep` layers are materialized."""

    model: torch.nn.Module
    arch: archs.Architecture
    mapping: dict                       # model tensor name -> (file, checkpoint key)
    dtype: Optional[torch.dtype]        # None: each tensor keeps the checkpoint's dtype
    keep: int = 1
    device: torch.device = torch.device("cpu")
    loads: dict = field(default_factory=lambda: defaultdict(int))   # layer -> times read (tests, logs)
    reads: list = field(default_factory=list)                        # checkpoint keys read, in order (tests)
    _resident: list = field(default_factory=list)
    _handles: list = field(default_factory=list)

    def _layer_prefix(self, index: int) -> str:
        return f"{self.arch.layers}.{index}."

    @staticmethod
    def _slots(root: torch.nn.Module, prefix: str) -> list:
        """[names, [(module, attribute)], parameter] per distinct parameter under `root` (tied ones once)."""
        by_id = {}
        for module_name, module in root.named_modules(remove_duplicate=False):
            for attribute, parameter in module._parameters.items():
                if parameter is None:
                    continue
                entry = by_id.setdefault(id(parameter), [[], [], parameter])
                entry[0].append(f"{prefix}{module_name + '.' if module_name else ''}{attribute}")
                entry[1].append((module, attribute))
        return list(by_id.values())

    def _read(self, slots) -> None:
        """Give each parameter slot its checkpoint values on the device; files are open only meanwhile."""
        from safetensors import safe_open

        by_file = defaultdict(list)
        for names, owners, parameter in slots:
            known = [name for name in names if name in self.mapping]
            if not known:
                raise UnsupportedCheckpoint(f"the checkpoint has no tensor for {names[0]}")
            path, key = self.mapping[known[0]]
            by_file[path].append((key, owners, parameter))
        with torch.inference_mode(False):
            for path, items in by_file.items():
                with safe_open(str(path), framework="pt") as handle:
                    for key, owners, parameter in items:
                        value = handle.get_tensor(key)
                        if tuple(value.shape) != tuple(parameter.shape):
                            raise UnsupportedCheckpoint(f"{key}: shape {tuple(value.shape)} in {path.name}, "
                                                        f"the model expects {tuple(parameter.shape)}")
                        self.reads.append(key)
                        real = torch.nn.Parameter(value.to(device=self.device, dtype=self.dtype or value.dtype),
                                                  requires_grad=False)
                        for module, attribute in owners:
                            module._parameters[attribute] = real

    def load_outside(self) -> None:
        """Read everything outside the decoder layers except an untied LM head (recording never runs it)."""
        layer_ids = {id(p) for p in archs.decoder_layers(self.model, self.arch).parameters()}
        head = self.arch.unembedding + "."
        slots = [slot for slot in self._slots(self.model, "") if id(slot[2]) not in layer_ids
                 and not all(name.startswith(head) for name in slot[0])]
        self._read(slots)
        with torch.inference_mode(False):
            for module in self.model.modules():
                for name, buffer in module._buffers.items():
                    if buffer is not None:
                        module._buffers[name] = buffer.to(self.device)

    def materialize(self, index: int) -> None:
        """Make layer `index` real (evicting the oldest resident layer first when `keep` are)."""
        if index in self._resident:
            return
        while len(self._resident) >= self.keep:
            self.release(self._resident.pop(0))
        layer = archs.decoder_layers(self.model, self.arch)[index]
        self._read(self._slots(layer, self._layer_prefix(index)))
        self._resident.append(index)
        self.loads[index] += 1

    def release(self, index: int) -> None:
        """Put layer `index`'s parameters back on the meta device (frees their memory)."""
        self._to_meta(self._slots(archs.decoder_layers(self.model, self.arch)[index], ""))

    @staticmethod
    def _to_meta(slots) -> None:
        for _, owners, parameter in slots:
            empty = torch.nn.Parameter(torch.empty(parameter.shape, dtype=parameter.dtype, device="meta"),
                                       requires_grad=False)
            for module, attribute in owners:
                module._parameters[attribute] = empty

    def _named_slots(self, names) -> list:
        """The parameter slots of the whole model that any of `names` (model tensor names) refers to."""
        wanted = set(names)
        return [slot for slot in self._slots(self.model, "") if wanted.intersection(slot[0])]

    def read_parameters(self, names) -> None:
        """Make just the parameters `names` real (tied ones through any of their names); real ones stay."""
        self._read([slot for slot in self._named_slots(names) if slot[2].is_meta])

    def release_parameters(self, names) -> None:
        """Put the parameters `names` back on the meta device."""
        self._to_meta(self._named_slots(names))

    def plan(self, last_layer: int) -> OffloadPlan:
        """The streamer's plan for this run: layers stream from the disk, so layer-major blocks pay."""
        layers = archs.decoder_layers(self.model, self.arch)
        sizes = [sum(p.numel() * p.element_size() for p in layers[i].parameters()) for i in range(last_layer + 1)]
        outside = sum(p.numel() * p.element_size() for n, p in self.model.named_parameters()
                      if not n.startswith(self.arch.layers + ".") and not n.startswith(self.arch.unembedding + "."))
        return OffloadPlan("stream", str(self.device), outside, sum(sizes), max(sizes), None,
                           "lazy weights: each layer is read from safetensors when it runs")

    def __enter__(self) -> "LazyWeights":
        layers = archs.decoder_layers(self.model, self.arch)
        for index, layer in enumerate(layers):
            self._handles.append(layer.register_forward_pre_hook(lambda m, a, i=index: self.materialize(i)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for index in self._resident:
            self.release(index)
        self._resident = []


@dataclass
class LazyStreamer:
    """What `record` enters instead of offload.LayerStreamer for a lazy model (same `.plan`)."""

    weights: LazyWeights
    last_layer: int

    def __post_init__(self):
        self.plan = self.weights.plan(self.last_layer)

    def __enter__(self):
        self.weights.__enter__()
        return self

    def __exit__(self, *exc):
        self.weights.__exit__(*exc)


@dataclass
class LazyLoadedModel(LoadedModel):
    """A LoadedModel whose decoder layers live on the meta device until they run."""

    weights: Optional[LazyWeights] = None

    def streamer(self, device, last_layer: int) -> LazyStreamer:
        self.weights.device = torch.device(device)
        self.weights.load_outside()
        return LazyStreamer(self.weights, last_layer)


def checkpoint_bytes(spec) -> Optional[int]:
    """Bytes of a directory checkpoint's weight files (None for GGUF files and the smollm2 alias)."""
    resolved = resolve(spec)
    if resolved.gguf_file is not None:
        return None
    return sum(p.stat().st_size for pattern in ("*.safetensors", "*.bin") for p in resolved.directory.glob(pattern))


def free_ram_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def wants_lazy(choice: str, spec) -> bool:
    """--weights: lazy, eager, or auto (lazy when the checkpoint is over half of the free RAM)."""
    if choice != "auto":
        return choice == "lazy"
    size, free = checkpoint_bytes(spec), free_ram_bytes()
    return size is not None and free is not None and size > free // 2


def _lazy_weights(resolved, spec, dtype, log) -> tuple:
    """(LazyWeights on a skeleton, its files) for a directory checkpoint, or UnsupportedCheckpoint before any work."""
    if resolved.gguf_file is not None:
        raise UnsupportedCheckpoint(f"{spec}: GGUF checkpoints load eagerly (--weights eager); lazy weights "
                                    "read safetensors")
    config = _config(resolved)
    archs.architecture_for(config)
    files = checkpoint_files(resolved.directory, log)
    model = _skeleton(config, dtype or torch.float32)
    mapping = key_map(model, files)
    arch = archs.architecture_for(model)
    missing = [name for name, _ in model.named_parameters() if name not in mapping
               and not name.startswith(arch.unembedding + ".")]
    if missing:
        raise UnsupportedCheckpoint(f"{resolved.directory}: {len(missing)} model tensors have no checkpoint key "
                                    f"after transformers' renaming (first: {missing[0]}); use --weights eager")
    return LazyWeights(model, arch, mapping, dtype), files


def load_lazy(spec, dtype=torch.float32, log=print) -> LazyLoadedModel:
    """A model for recording whose layers are read from safetensors as they run (refusals before any work)."""
    resolved = resolve(spec)
    weights, files = _lazy_weights(resolved, spec, dtype, log)
    model = weights.model
    tokenizer = _tokenizer(resolved) if _has_tokenizer(resolved) else None
    source = {"spec": str(spec), "path": str(resolved.directory), "gguf_file": None, "class": type(model).__name__,
              "config": model.config.to_dict(), "dtype": str(dtype).replace("torch.", ""), "quantized_gguf": False,
              "weights": "lazy", "files": [p.name for p in files]}
    return LazyLoadedModel(model=model, tokenizer=tokenizer, arch=weights.arch, source=source, weights=weights)


class LazySuppressionWeights(archs.ModelWeights):
    """ModelWeights on a lazy skeleton: each layer asked gets only the tensors update_directions reads.

    The math stays ModelWeights'; this only fills in, before it runs, the parameters
    `archs.suppression_parameters` names (down projection, FFN-output norm, project_out) for one layer
    at a time, and the unembedding once; every other weight stays on the meta device.
    """

    def __init__(self, weights: LazyWeights):
        super().__init__(weights.model, weights.arch)
        self.weights = weights
        self._layer_names = []   # the resident layer's own parameters (released when another layer is asked)

    def update_directions(self, layer: int, neurons=None):
        names = archs.suppression_parameters(self.model, self.arch, layer)
        own = [name for name in names if name.startswith(f"{self.arch.layers}.{layer}.")]
        if own != self._layer_names:
            self.weights.release_parameters(self._layer_names)
            self._layer_names = own
        self.weights.read_parameters(names)
        return super().update_directions(layer, neurons)

    def unembedding(self):
        if self._unembedding is None:
            names = [self.arch.unembedding + ".weight"]
            self.weights.read_parameters(names)
            super().unembedding()           # a numpy copy, kept; the parameter itself goes back to meta
            self.weights.release_parameters(names)
        return self._unembedding


def _checkpoint_dtype(config) -> Optional[torch.dtype]:
    """The dtype `from_pretrained(dtype="auto")` gives: the config's, else each tensor's own (None)."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) else None


def suppression_weights(spec, log=print) -> LazySuppressionWeights:
    """Suppression weights read lazily from safetensors, in the dtype the eager `dtype="auto"` load has."""
    resolved = resolve(spec)
    dtype = None if resolved.gguf_file is not None else _checkpoint_dtype(_config(resolved))
    weights, _ = _lazy_weights(resolved, spec, dtype, log)
    weights.model.tie_weights()   # a tied head is read through the input embedding's key, as from_pretrained ties it
    return LazySuppressionWeights(weights)

