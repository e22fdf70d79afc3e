"""Drop-in activation counters: ``NeuronCounter`` for one layer, ``attach_counters`` for any HF model.

A counter holds the integer counts of SPEC §2 that need no token ids (``tokens``, ``active``,
``pos_seen``, ``pos_active``) plus ``nan_count``, as tensors on the activations' device, and is fed by
one fused pass per call (``fastneurons.kernels.count_activations``) without a host sync.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from fastneurons.devices import canonical_device
from fastneurons.kernels import count_activations, words_for

_STORED = ("domain_tokens", "domain_active", "pos_seen", "pos_active", "nan_count")
_SCRATCH = weakref.WeakValueDictionary()  # (device, T, F) -> the shared, never read pos_active scratch


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions int32 [B, S] from a 0/1 attention mask: number of non-pad tokens before each, -1 at pads."""
    mask = torch.as_tensor(attention_mask)
    if mask.dim() != 2:
        raise ValueError(f"attention_mask must be [batch, seq_len], got shape {tuple(mask.shape)}")
    mask = mask != 0
    positions = torch.cumsum(mask, dim=1, dtype=torch.int32) - 1
    return torch.where(mask, positions, torch.full_like(positions, -1))


class NeuronCounter:
    """Integer activation counts of one layer's ``num_neurons`` neurons (SPEC §2), updated batch by batch.

    ``domains > 1`` keeps ``tokens`` and ``active`` per domain too (``domain_tokens`` [D],
    ``domain_active`` [D, F]; ``update(..., domain=d)``); ``count_positions=False`` keeps no
    ``pos_active`` (the kernel then writes a shared scratch table nobody reads).
    """

    def __init__(self, num_neurons: int, *, max_positions: int = 2048, threshold: float = 0.0,
                 device="cpu", keep_bits: bool = False, domains: int = 1, count_positions: bool = True):
        for name, value in (("num_neurons", num_neurons), ("max_positions", max_positions), ("domains", domains)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.num_neurons = int(num_neurons)
        self.max_positions = int(max_positions)
        self.threshold = float(threshold)
        self.device = canonical_device(device)  # "cuda" -> "cuda:N", to compare with tensor.device
        self.keep_bits = bool(keep_bits)
        self.domains = int(domains)
        self.count_positions = bool(count_positions)
        self.reset()

    def reset(self) -> None:
        """Set every count back to zero."""
        zeros = dict(dtype=torch.int64, device=self.device)
        self.domain_tokens = torch.zeros(self.domains, **zeros)
        self.domain_active = torch.zeros(self.domains, self.num_neurons, **zeros)
        self.pos_seen = torch.zeros(self.max_positions, **zeros)
        self.pos_active = torch.zeros(self.max_positions, self.num_neurons, **zeros) if self.count_positions else None
        self.nan_count = torch.zeros(1, **zeros)

    @property
    def tokens(self) -> torch.Tensor:
        """Counted tokens (int64 0-d tensor), all domains together."""
        return self.domain_tokens[0] if self.domains == 1 else self.domain_tokens.sum()

    @property
    def active(self) -> torch.Tensor:
        """Counted tokens on which each neuron was active (int64 [F]), all domains together."""
        return self.domain_active[0] if self.domains == 1 else self.domain_active.sum(dim=0)

    def update(self, pre_activations: torch.Tensor, positions, counted_mask=None, *, domain: int = 0):
        """Add one batch: ``pre_activations`` [B, S, F] or [N, F], ``positions`` [B, S] or [N] (-1 = pad).

        ``counted_mask`` (bool, same shape as positions) selects the tokens counted in ``tokens`` and
        ``active``; by default ``positions >= 1`` (BOS at position 0 excluded, SPEC §1). Pads are never
        counted. Returns the activation bits int64 [..., ceil(F/64)] when ``keep_bits``, else None.
        """
        pre = pre_activations.detach()
        if pre.device != self.device:
            raise ValueError(f"activations are on {pre.device} but this counter is on {self.device}: "
                             f"create the counter with device={str(pre.device)!r}")
        if pre.dim() not in (2, 3) or pre.shape[-1] != self.num_neurons:
            raise ValueError(f"pre_activations must be [B, S, {self.num_neurons}] or [N, {self.num_neurons}], "
                             f"got shape {tuple(pre.shape)}")
        if not 0 <= domain < self.domains:
            raise ValueError(f"domain {domain} is not among this counter's {self.domains} domains")
        if pre.stride(-1) != 1:
            pre = pre.contiguous()
        rows = tuple(pre.shape[:-1])
        positions = self._rows(positions, rows, "positions").to(torch.int32).contiguous()
        nonpad = positions >= 0
        if counted_mask is None:
            counted = positions >= 1
        else:
            counted = self._rows(counted_mask, rows, "counted_mask").to(torch.bool) & nonpad
        counted = counted.contiguous()
        bits = None
        if self.keep_bits:
            bits = torch.empty(rows + (words_for(self.num_neurons),), dtype=torch.int64, device=self.device)
        pos_active = self.pos_active if self.pos_active is not None else self._scratch()
        count_activations(pre, positions, counted, self.threshold, self.domain_active[domain], pos_active,
                          bits=bits, nan_count=self.nan_count)
        self.domain_tokens[domain] += counted.sum()
        in_table = nonpad & (positions < self.max_positions)
        index = positions.clamp(0, self.max_positions - 1).reshape(-1).long()
        self.pos_seen.scatter_add_(0, index, in_table.reshape(-1).long())
        return bits

    def _scratch(self) -> torch.Tensor:
        """The [T, F] table the kernel needs when positions are not kept: one per shape and device."""
        key = (str(self.device), self.max_positions, self.num_neurons)
        scratch = _SCRATCH.get(key)
        if scratch is None:
            scratch = torch.zeros((self.max_positions, self.num_neurons), dtype=torch.int64, device=self.device)
            _SCRATCH[key] = scratch
        self._scratch_ref = scratch  # held while this counter lives
        return scratch

    def load_state(self, state: dict) -> None:
        """Start from earlier counts: numpy or torch arrays for any of domain_tokens, domain_active,
        pos_seen, pos_active, nan_count (e.g. a store's, when a recording resumes)."""
        for name, value in state.items():
            if name not in _STORED or getattr(self, name) is None:
                raise ValueError(f"a counter has no {name!r} to load (it keeps {', '.join(_STORED)})")
            target = getattr(self, name)
            target.copy_(torch.as_tensor(np.asarray(value)).reshape(target.shape))

    def _rows(self, values, rows, name) -> torch.Tensor:
        """``values`` as a tensor on the counter's device with shape ``rows`` ([B, S] flattens to [N])."""
        values = torch.as_tensor(values, device=self.device)
        if tuple(values.shape) != rows:
            if len(rows) == 1 and values.numel() == rows[0]:
                return values.reshape(rows)
            raise ValueError(f"{name} must have shape {rows} (one per activation row), got {tuple(values.shape)}")
        return values

    def check_no_nans(self, name: str = "layer") -> None:
        """Raise ValueError if any NaN pre-activation was seen (this syncs with the GPU)."""
        nans = int(self.nan_count.sum())
        if nans:
            raise ValueError(f"{name}: {nans} pre-activations were NaN, so their neurons were counted as "
                             "inactive; the model overflows in this dtype: run it in float32 or bfloat16")

    def state_dict(self) -> dict:
        """The counts as numpy int64 arrays: tokens (0-d), active, pos_seen, pos_active (if kept), nan_count."""
        names = ("tokens", "active", "pos_seen", "pos_active", "nan_count")
        return {name: getattr(self, name).cpu().numpy().astype(np.int64)
                for name in names if getattr(self, name) is not None}

    def __repr__(self) -> str:
        return (f"NeuronCounter(num_neurons={self.num_neurons}, max_positions={self.max_positions}, "
                f"threshold={self.threshold}, device={str(self.device)!r})")


@dataclass(frozen=True)
class CounterSettings:
    """How `attach_counters` counts: the counters' shape and definition and where activations come from."""

    max_positions: int = 2048
    threshold: float = 0.0
    positions: Callable | None = None  # tensor -> positions | (positions, counted); None: from the batch
    use_input: bool = False  # count the module's first input instead of its output
    transform: Callable | None = None  # applied to the hooked tensor first (e.g. torch.abs)
    keep_bits: bool | frozenset = False  # True, or the names of the modules whose bits are kept
    count_bos: bool = False
    device: object = None  # where the counters live (None: the activations' device)
    num_neurons: int | None = None  # known up front: counters are created at once, on device (default cpu)
    domains: int = 1
    count_positions: bool = True
    on_bits: Callable | None = None  # on_bits(name, bits) after each counted call of a bits-keeping module

    def keeps_bits(self, name: str) -> bool:
        return self.keep_bits is True or (bool(self.keep_bits) and name in self.keep_bits)


class CounterHandle:
    """Hooks that feed one ``NeuronCounter`` per hooked module; a context manager that removes them."""

    def __init__(self, model: torch.nn.Module, module_names: list[str], settings: CounterSettings):
        self.settings = settings
        self.counters: dict[str, NeuronCounter] = {}
        self.bits: dict[str, torch.Tensor] = {}
        self.device = None if settings.device is None else canonical_device(settings.device)
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._domain = 0
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._manual = False
        self._hooks = []
        modules = {name: _submodule(model, name) for name in module_names}
        if settings.num_neurons is not None:
            for name in module_names:
                self.counters[name] = self._new_counter(name, settings.num_neurons, self.device or "cpu")
        if settings.positions is None:
            self._hooks.append(model.register_forward_pre_hook(self._capture_batch, with_kwargs=True))
        for name, module in modules.items():
            if settings.use_input:
                hook = module.register_forward_pre_hook(lambda m, args, name=name: self._count(name, args[0]))
            else:
                hook = module.register_forward_hook(lambda m, args, out, name=name: self._count(name, out))
            self._hooks.append(hook)

    def _new_counter(self, name: str, num_neurons: int, device) -> NeuronCounter:
        settings = self.settings
        return NeuronCounter(num_neurons, max_positions=settings.max_positions, threshold=settings.threshold,
                             device=device, keep_bits=settings.keeps_bits(name), domains=settings.domains,
                             count_positions=settings.count_positions)

    def set_batch(self, attention_mask: torch.Tensor, count_bos: bool | None = None, *, domain: int = 0) -> None:
        """Use this attention mask [B, S] for the following forward passes (instead of the model's own)."""
        self._manual, self._domain = True, domain
        self._set(positions_from_mask(attention_mask), count_bos)

    def set_positions(self, positions: torch.Tensor, counted: torch.Tensor | None = None, *, domain: int = 0) -> None:
        """Use explicit positions [B, S] (-1 = pad), optional counted mask and the domain they add to
        for the following forward passes."""
        self._manual, self._domain = True, domain
        positions = torch.as_tensor(positions).to(torch.int32)
        if counted is None:
            self._set(positions, None)
        else:
            self._batch = (positions, torch.as_tensor(counted, device=positions.device).bool() & (positions >= 0))
            self._on_device = {}

    def _set(self, positions: torch.Tensor, count_bos: bool | None) -> None:
        first = 0 if (self.settings.count_bos if count_bos is None else count_bos) else 1
        self._batch = (positions, positions >= first)
        self._on_device = {}

    def _capture_batch(self, model, args, kwargs):
        """Forward pre-hook on the model: positions from its attention_mask (or no padding)."""
        if self._manual:
            return
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1 and isinstance(args[1], torch.Tensor):
            mask = args[1]
        if mask is None or mask.dim() != 2:
            tokens = kwargs.get("input_ids", args[0] if args else None)
            if tokens is None:
                tokens = kwargs.get("inputs_embeds")
            if not isinstance(tokens, torch.Tensor) or tokens.dim() < 2:
                raise ValueError("attach_counters could not infer the batch shape: call handle.set_batch(attention_mask)")
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        self._set(positions_from_mask(mask), None)

    def _batch_for(self, tensor: torch.Tensor):
        if self.settings.positions is not None:
            result = self.settings.positions(tensor)
            positions, counted = result if isinstance(result, tuple) else (result, None)
            positions = torch.as_tensor(positions, device=tensor.device)
            if counted is None:
                counted = positions >= (0 if self.settings.count_bos else 1)
            return positions, counted
        if self._batch is None:
            raise ValueError("no batch positions: call handle.set_batch(attention_mask) before the forward pass")
        if tensor.device not in self._on_device:
            self._on_device[tensor.device] = tuple(t.to(tensor.device) for t in self._batch)
        return self._on_device[tensor.device]

    def _count(self, name: str, tensor) -> None:
        if isinstance(tensor, (tuple, list)):
            tensor = tensor[0]
        tensor = tensor.detach()
        if self.device is not None:
            tensor = tensor.to(self.device)
        if self.settings.transform is not None:
            tensor = self.settings.transform(tensor)
        counter = self.counters.get(name)
        if counter is None:
            counter = self.counters[name] = self._new_counter(name, tensor.shape[-1], tensor.device)
        positions, counted = self._batch_for(tensor)
        bits = counter.update(tensor, positions, counted, domain=self._domain)
        if bits is not None:
            self.bits[name] = bits
            if self.settings.on_bits is not None:
                self.settings.on_bits(name, bits)

    def remove(self) -> None:
        """Detach every hook (the counters stay readable)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def __enter__(self) -> "CounterHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _submodule(model: torch.nn.Module, name: str) -> torch.nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        examples = [n for n, _ in model.named_modules() if n][:5]
        raise ValueError(f"model has no module named {name!r} (module names look like {examples})") from None


def attach_counters(model: torch.nn.Module, module_names: str | Iterable[str], **settings) -> CounterHandle:
    """Count the neurons of the named modules of any HF model on every forward pass; returns the handle.

    Each module's output [B, S, F] (or [B*S, F]) is the pre-activation, or its first input with
    ``use_input=True`` (e.g. ``down_proj`` with ``transform=torch.abs`` for ``|act(gate) * up|``).
    Positions come from the ``attention_mask`` the model is called with (no mask: no padding), from
    ``handle.set_batch(mask)``, or from ``positions(tensor) -> positions | (positions, counted)``.
    Counters are created on the first forward, on the activations' device (or ``device``), or at
    once given ``num_neurons``. The keyword settings are `CounterSettings`'s fields.
    """
    names = [module_names] if isinstance(module_names, str) else list(module_names)
    if not names:
        raise ValueError("module_names is empty: name at least one module, e.g. 'model.decoder.layers.0.fc1'")
    keep_bits = settings.get("keep_bits", False)
    if not isinstance(keep_bits, bool):
        settings["keep_bits"] = frozenset(keep_bits)
    settings.update(max_positions=int(settings.get("max_positions", 2048)),
                    threshold=float(settings.get("threshold", 0.0)))
    return CounterHandle(model, names, CounterSettings(**settings))
