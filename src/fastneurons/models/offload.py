"""Stream decoder-layer weights to the GPU one layer at a time (SPEC §4), or keep the model resident.

`LayerStreamer` is a context manager around recording. It plans one of three modes:
- "none": the device is the CPU, nothing moves;
- "resident": the needed layers and everything outside the layers fit the GPU budget: they move once;
- "stream": everything outside the layers moves once; the needed layers' weights stay in their own
  (pageable) CPU memory. Before a layer runs, its weights are gathered into one of two pinned
  staging buffers (a host copy) and copied from there, on a second CUDA stream, into one of two
  fixed GPU slots: layer l+1 is copied while layer l computes and layer l+2 is staged on the host
  meanwhile, so the weights on the GPU never exceed two layers and pinned host memory never exceeds
  two layers either (pinning every layer through torch's caching host allocator cost about 2.3x the
  weights of host RAM). Events order the copy stream against the compute stream and the host.
Only layers 0..last_layer run (the forward stops there), so later layers never move. On exit every
parameter and buffer is back on the device it started on, with its original values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Union

import torch

from fastneurons.models.architectures import Architecture, decoder_layers

COMFORT = 0.7        # with no budget given, use at most this share of the free GPU memory for weights
_ALIGN_BYTES = 256   # each tensor in a slot starts at a multiple of this


@dataclass(frozen=True)
class OffloadPlan:
    """Which mode the streamer uses and the weight bytes behind that choice."""

    mode: str                 # "none" | "resident" | "stream"
    device: str
    outside_bytes: int        # weights outside the decoder layers that go to the device (lm_head excluded)
    layers_bytes: int         # weights of the layers 0..last_layer
    largest_layer_bytes: int
    budget_bytes: Optional[int]
    reason: str

    @property
    def device_weight_bytes(self) -> int:
        """Weight bytes held on the device while recording."""
        if self.mode == "resident":
            return self.outside_bytes + self.layers_bytes
        if self.mode == "stream":
            return self.outside_bytes + 2 * self.largest_layer_bytes
        return 0


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _size(nbytes: Optional[int]) -> str:
    if nbytes is None:
        return "no limit"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes} B"


def _last_layer(layers_needed: Union[int, Iterable[int]], count: int) -> int:
    last = layers_needed if isinstance(layers_needed, int) else max(layers_needed, default=-1)
    if not 0 <= last < count:
        raise ValueError(f"layers_needed must name layers in 0..{count - 1}, got last layer {last}")
    return int(last)


def _outside_tensors(model, arch: Architecture):
    """(name, tensor) for parameters and buffers outside the decoder layers, shared ones once, lm_head
    excluded unless tied to a tensor that is needed (recording never runs the LM head)."""
    layer_ids = {id(t) for t in decoder_layers(model, arch).parameters()}
    layer_ids |= {id(t) for t in decoder_layers(model, arch).buffers()}
    head = arch.unembedding + "."
    seen, out = set(), []
    named = list(model.named_parameters(remove_duplicate=True)) + list(model.named_buffers(remove_duplicate=True))
    for name, tensor in named:
        if id(tensor) in layer_ids or id(tensor) in seen or name.startswith(head):
            continue
        seen.add(id(tensor))
        out.append((name, tensor))
    return out


def _layer_tensors(layer: torch.nn.Module):
    tensors = list(layer.parameters()) + list(layer.buffers())
    unique = {id(t): t for t in tensors}
    return list(unique.values())


def plan_offload(model, arch: Architecture, device, layers_needed, gpu_memory_bytes: Optional[int] = None,
                 free_bytes: Optional[int] = None, mode: Optional[str] = None) -> OffloadPlan:
    """Choose "none" (CPU), "resident" (fits the budget) or "stream" for recording up to the last needed layer.

    The budget is `gpu_memory_bytes`, else COMFORT x the free device memory (`free_bytes`, queried
    from CUDA when None). `mode` forces a mode (tests stream on the CPU this way).
    """
    device = torch.device(device)
    layers = decoder_layers(model, arch)
    last = _last_layer(layers_needed, len(layers))
    outside = sum(_nbytes(t) for _, t in _outside_tensors(model, arch))
    sizes = [sum(_nbytes(t) for t in _layer_tensors(layers[i])) for i in range(last + 1)]
    layers_bytes, largest = sum(sizes), max(sizes)
    budget = gpu_memory_bytes
    if budget is None and device.type == "cuda":
        if free_bytes is None:
            free_bytes, _ = torch.cuda.mem_get_info(device)
        budget = int(COMFORT * free_bytes)

    def plan(chosen, reason):
        return OffloadPlan(chosen, str(device), outside, layers_bytes, largest, budget, reason)

    if mode is not None:
        if mode not in ("none", "resident", "stream"):
            raise ValueError(f"mode must be 'none', 'resident' or 'stream', got {mode!r}")
        return plan(mode, "forced")
    if device.type == "cpu":
        return plan("none", "the device is the CPU")
    if budget is None or outside + layers_bytes <= budget:
        return plan("resident", f"{_size(outside + layers_bytes)} of weights fit the budget of {_size(budget)}")
    if outside + 2 * largest > budget:
        raise ValueError(f"not even two layers fit the GPU budget: streaming needs {_size(outside + 2 * largest)} "
                         f"of weights, the budget is {_size(budget)}; raise --gpu-memory or use a smaller dtype")
    return plan("stream", f"{_size(outside + layers_bytes)} of weights exceed the budget of {_size(budget)}; "
                          f"streaming through two layer slots ({_size(outside + 2 * largest)} on the device)")


class _LayerPack:
    """Where one layer's tensors go in the flat per-dtype staging and slot buffers; their own storage stays."""

    def __init__(self, tensors):
        self.tensors = tensors
        self.layout = []           # (tensor, dtype, offset, shape) in flat-buffer elements
        totals = {}
        for tensor in tensors:
            align = max(1, _ALIGN_BYTES // tensor.element_size())
            offset = -(-totals.get(tensor.dtype, 0) // align) * align
            self.layout.append((tensor, tensor.dtype, offset, tensor.shape))
            totals[tensor.dtype] = offset + tensor.numel()
        self.sizes = totals        # dtype -> elements
        self.originals = [tensor.data for tensor in tensors]   # the CPU storage, put back on restore
        self.device_views = [None, None]   # per slot: views into that slot's buffers

    def _views(self, buffers):
        return [buffers[dtype][offset:offset + t.numel()].view(shape) for t, dtype, offset, shape in self.layout]

    def bind_slot(self, slot: int, buffers) -> None:
        self.device_views[slot] = self._views(buffers)

    def stage(self, staging) -> None:
        """Gather the layer's weights into the flat host buffers ``staging`` (dtype -> tensor)."""
        for view, original in zip(self._views(staging), self.originals):
            view.copy_(original)

    def point_to_host(self) -> None:
        for tensor, original in zip(self.tensors, self.originals):
            tensor.data = original

    def point_to_device(self, slot: int) -> None:
        for tensor, view in zip(self.tensors, self.device_views[slot]):
            tensor.data = view

    def restore(self) -> None:
        """Point every tensor at its own CPU storage again and drop the slot views."""
        self.point_to_host()
        self.device_views = [None, None]


def buffer_sizes(packs) -> dict:
    """Elements per dtype of one staging buffer or GPU slot: the largest layer's, whatever the layer count."""
    sizes = {}
    for pack in packs:
        for dtype, size in pack.sizes.items():
            sizes[dtype] = max(sizes.get(dtype, 0), size)
    return sizes


def moves_to_host(tensors, host=torch.device("cpu")):
    """(tensor, device it started on) for each tensor not on ``host``: streamed layers live on the host
    while streaming and go back to where they started on exit."""
    return [(tensor, tensor.device) for tensor in tensors if tensor.device != host]


class LayerStreamer:
    """Context manager that makes `model` run on `device` for recording layers 0..last needed layer.

    `layers_needed` is the last layer index or an iterable of layer indices. `plan.mode` tells which
    mode was chosen ("none", "resident", "stream"). Use `run_until` from architectures so the forward
    stops after the last needed layer; later layers stay where they are.
    """

    def __init__(self, model, arch: Architecture, device, layers_needed, gpu_memory_bytes: Optional[int] = None,
                 mode: Optional[str] = None):
        self.model, self.arch, self.device = model, arch, torch.device(device)
        self.plan = plan_offload(model, arch, self.device, layers_needed, gpu_memory_bytes, mode=mode)
        self.last_layer = _last_layer(layers_needed, len(decoder_layers(model, arch)))
        self._moved = []        # (tensor, original device) moved once
        self._packs = []
        self._handles = []
        self._occupant = [None, None]   # which layer index each slot holds
        self._attached = [False, False]  # whether that layer's tensors point into the slot now
        self._cuda = self.device.type == "cuda"
        self.copies = 0                  # host -> device layer copies done (for tests and logs)

    # ---- mode changes -------------------------------------------------------------------------
    def __enter__(self) -> "LayerStreamer":
        if self.plan.mode == "none":
            return self
        try:
            with torch.inference_mode(False):   # ordinary tensors even if entered under inference_mode
                self._move_outside()
                if self.plan.mode == "resident":
                    self._move_layers()
                else:
                    self._start_streaming()
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _move(self, tensor: torch.Tensor) -> None:
        self._moved.append((tensor, tensor.device))
        tensor.data = tensor.data.to(self.device)

    def _move_outside(self) -> None:
        for _, tensor in _outside_tensors(self.model, self.arch):
            if tensor.device != self.device:
                self._move(tensor)

    def _move_layers(self) -> None:
        layers = decoder_layers(self.model, self.arch)
        for index in range(self.last_layer + 1):
            for tensor in _layer_tensors(layers[index]):
                if tensor.device != self.device:
                    self._move(tensor)

    def _start_streaming(self) -> None:
        layers = decoder_layers(self.model, self.arch)
        owner = {}
        for index in range(self.last_layer + 1):
            for tensor in _layer_tensors(layers[index]):
                if id(tensor) in owner:
                    raise ValueError(f"layers {owner[id(tensor)]} and {index} share a weight: cannot stream them")
                owner[id(tensor)] = index
        for index in range(self.last_layer + 1):
            for tensor, home in moves_to_host(_layer_tensors(layers[index])):
                self._moved.append((tensor, home))
                tensor.data = tensor.data.to("cpu")
        self._packs = [_LayerPack(_layer_tensors(layers[index])) for index in range(self.last_layer + 1)]
        sizes = buffer_sizes(self._packs)
        self._slots = [{dtype: torch.empty(size, dtype=dtype, device=self.device) for dtype, size in sizes.items()}
                       for _ in range(2)]
        self._staging = [{dtype: torch.empty(size, dtype=dtype, pin_memory=self._cuda) for dtype, size in sizes.items()}
                         for _ in range(2)]
        self._staged = [None, None]    # which layer each staging buffer holds
        for index, pack in enumerate(self._packs):
            pack.bind_slot(index % 2, self._slots[index % 2])
        if self._cuda:
            self._copy_stream = torch.cuda.Stream(self.device)
            self._copied = [torch.cuda.Event(), torch.cuda.Event()]
        for index in range(self.last_layer + 1):
            layer = layers[index]
            self._handles.append(layer.register_forward_pre_hook(lambda m, a, i=index: self._before_layer(i)))
            self._handles.append(layer.register_forward_hook(lambda m, a, o, i=index: self._after_layer(i)))

    @property
    def pinned_bytes(self) -> int:
        """Host bytes of the staging buffers (pinned on CUDA): two layers' worth, whatever the layer count."""
        return sum(t.numel() * t.element_size() for staging in getattr(self, "_staging", []) for t in staging.values())

    def _restore(self) -> None:
        with torch.inference_mode(False):
            self._restore_all()

    def _restore_all(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._cuda and self._packs:
            torch.cuda.synchronize(self.device)
        for pack in self._packs:
            pack.restore()
        self._packs, self._slots, self._staging = [], None, []
        self._occupant, self._attached = [None, None], [False, False]
        for tensor, device in reversed(self._moved):
            tensor.data = tensor.data.to(device)
        self._moved = []

    # ---- streaming ----------------------------------------------------------------------------
    def _stage(self, index: int) -> None:
        """Gather layer `index` into its staging buffer (host copy), once that buffer's last copy to the GPU
        has finished."""
        buffer = index % 2
        if self._staged[buffer] == index:
            return
        if self._cuda:
            self._copied[buffer].synchronize()   # the copy out of this buffer (two layers ago) is done
        self._packs[index].stage(self._staging[buffer])
        self._staged[buffer] = index

    def _fetch(self, index: int) -> None:
        """Start copying layer `index` from its staging buffer into its slot, after all compute already
        queued (which may still read the slot's previous occupant) has finished."""
        slot = index % 2
        if self._occupant[slot] == index:
            return
        self._stage(index)
        previous = self._occupant[slot]
        if previous is not None and self._attached[slot]:
            self._packs[previous].point_to_host()
            self._attached[slot] = False
        staging, buffers = self._staging[slot], self._slots[slot]
        sizes = self._packs[index].sizes
        if self._cuda:
            free_to_overwrite = torch.cuda.current_stream(self.device).record_event()
            self._copy_stream.wait_event(free_to_overwrite)
            with torch.cuda.stream(self._copy_stream):
                for dtype, size in sizes.items():
                    buffers[dtype][:size].copy_(staging[dtype][:size], non_blocking=True)
                self._copied[slot].record(self._copy_stream)
        else:
            for dtype, size in sizes.items():
                buffers[dtype][:size].copy_(staging[dtype][:size])
        self._occupant[slot] = index
        self.copies += 1

    def _before_layer(self, index: int) -> None:
        slot = index % 2
        self._fetch(index)
        if self._cuda:
            torch.cuda.current_stream(self.device).wait_event(self._copied[slot])
        self._packs[index].point_to_device(slot)
        self._attached[slot] = True
        if index + 1 <= self.last_layer:
            self._fetch(index + 1)

    def _after_layer(self, index: int) -> None:
        slot = index % 2
        if self._occupant[slot] == index and self._attached[slot]:
            self._packs[index].point_to_host()
            self._attached[slot] = False
        if index + 2 <= self.last_layer:
            self._stage(index + 2)   # on the host while the GPU runs this layer and copies the next
