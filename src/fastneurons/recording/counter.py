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
from fastneurons.kernels import (check_dtype, check_positions_in_table, check_threshold, count_activations_checked,
                                 words_for)

_STORED = ("domain_tokens", "domain_active", "pos_seen", "pos_active", "nan_count")
_SCRATCH = weakref.WeakValueDictionary()  # (device, T, F) -> the shared, never read pos_active scratch
_RECENT_LIMIT = 65535  # rows a uint16 count of recent rows holds per position before it must be drained


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions int32 [B, S] from a 0/1 attention mask: number of non-pad tokens before each, -1 at pads."""
    mask = torch.as_tensor(attention_mask)
    if mask.dim() != 2:
        raise ValueError(f"attention_mask must be [batch, seq_len], got shape {tuple(mask.shape)}")
    mask = mask != 0
    positions = torch.cumsum(mask, dim=1, dtype=torch.int32) - 1
    return torch.where(mask, positions, torch.full_like(positions, -1))


@dataclass(frozen=True)
class BatchRows:
    """A batch's rows as counters take them, made once per batch (``NeuronCounter.batch_rows``) and
    shared by every hooked layer (`CounterHandle` does): between a model's layers each small torch op
    costs tens of microseconds, so a layer's update runs only the ops that depend on its activations."""

    shape: tuple  # the rows: [B, S] or [N]
    positions: torch.Tensor  # int32, contiguous, -1 = pad
    counted: torch.Tensor  # bool, contiguous: counted and not pad
    per_position: torch.Tensor  # int64 [T]: rows at each position < T
    num_counted: torch.Tensor  # int64 0-d
    max_positions: int
    most_at_a_position: int | None  # max of per_position (CPU; None on CUDA, where it would sync)


class NeuronCounter:
    """Integer activation counts of one layer's ``num_neurons`` neurons (SPEC §2), updated batch by batch.

    ``domains > 1`` keeps ``tokens`` and ``active`` per domain too (``domain_tokens`` [D],
    ``domain_active`` [D, F]; ``update(..., domain=d)``); ``count_positions=False`` keeps no
    ``pos_active`` (the kernel then writes a shared scratch table nobody reads).

    On the CPU the kernel adds into a uint16 table of recent counts, drained into the int64
    ``pos_active`` before any position could pass 65,535 rows and whenever ``pos_active`` is read:
    with few rows per position, the table's traffic, not the activations', is what a pass costs.
    """

    def __init__(self, num_neurons: int, *, max_positions: int = 2048, threshold: float = 0.0,
                 device="cpu", keep_bits: bool = False, domains: int = 1, count_positions: bool = True):
        for name, value in (("num_neurons", num_neurons), ("max_positions", max_positions), ("domains", domains)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.num_neurons = int(num_neurons)
        self.max_positions = int(max_positions)
        self.threshold = check_threshold(threshold)
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
        shape = self._table_shape
        self._pos_total = None  # int64 [T, F], made when first needed (count_positions_into may bring its own)
        narrow = self.count_positions and self.device.type == "cpu"
        self._pos_recent = torch.zeros(shape, dtype=torch.uint16) if narrow else None
        self._recent_bound = 0  # at least the most rows any position added to _pos_recent since it was drained
        self.nan_count = torch.zeros(1, **zeros)
        self._domain_rows = list(self.domain_active.unbind(0))  # views, made once: update takes one per call
        self._domain_token_rows = list(self.domain_tokens.unbind(0))

    @property
    def _table_shape(self) -> tuple:
        """(T, F): the shape of every per-(position, neuron) table."""
        return (self.max_positions, self.num_neurons)

    @property
    def pos_active(self) -> torch.Tensor | None:
        """Rows at each position on which each neuron was active (int64 [T, F]), or None when not kept."""
        if not self.count_positions:
            return None
        self._drain_recent()
        return self._totals()

    def _totals(self) -> torch.Tensor:
        """The int64 [T, F] position totals, zeros made the first time they are needed (a recording
        hands its own table to ``count_positions_into`` first: no second table is ever made)."""
        if self._pos_total is None:
            self._pos_total = torch.zeros(self._table_shape, dtype=torch.int64, device=self.device)
        return self._pos_total

    def count_positions_into(self, table: torch.Tensor) -> None:
        """Keep ``pos_active`` in ``table`` from now on (int64 [T, F], contiguous, on the counter's
        device; e.g. one layer of a stacked [L, T, F] array, which then needs no copy to be written);
        the counts so far are added into it."""
        if not self.count_positions:
            raise ValueError("this counter keeps no pos_active (count_positions=False)")
        shape = self._table_shape
        if (table.dtype != torch.int64 or tuple(table.shape) != shape or table.device != self.device
                or not table.is_contiguous()):
            raise ValueError(f"table must be a contiguous int64 tensor {shape} on "
                             f"{self.device}, got {table.dtype} {tuple(table.shape)} on {table.device}")
        if self._pos_total is not None:
            table += self._pos_total
        self._pos_total = table
        self._drain_recent()  # the recent counts go straight into the table

    def _drain_recent(self) -> None:
        """Add the uint16 recent counts into the int64 totals and clear them."""
        if self._pos_recent is not None and self._recent_bound:
            self._totals().numpy()[...] += self._pos_recent.numpy()
            self._pos_recent.zero_()
            self._recent_bound = 0

    def _positions_table(self, most_at_a_position) -> torch.Tensor:
        """The [T, F] table a call adds into, given the most rows it has at one position: the recent
        counts while they cannot wrap, else the totals (after draining); the scratch when positions
        are not kept."""
        if not self.count_positions:
            return self._scratch()
        if self._pos_recent is None:
            return self._totals()
        if self._recent_bound + most_at_a_position <= _RECENT_LIMIT:
            return self._pos_recent
        self._drain_recent()
        return self._pos_recent if most_at_a_position <= _RECENT_LIMIT else self._totals()

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
        counted. ``positions`` may also be a `BatchRows` from ``batch_rows`` (then no ``counted_mask``).
        Returns the activation bits int64 [..., ceil(F/64)] when ``keep_bits``, else None.
        """
        pre = pre_activations.detach()
        if pre.device != self.device:
            raise ValueError(f"activations are on {pre.device} but this counter is on {self.device}: "
                             f"create the counter with device={str(pre.device)!r}")
        if pre.dim() not in (2, 3) or pre.shape[-1] != self.num_neurons:
            raise ValueError(f"pre_activations must be [B, S, {self.num_neurons}] or [N, {self.num_neurons}], "
                             f"got shape {tuple(pre.shape)}")
        check_dtype(pre)
        if not 0 <= domain < self.domains:
            raise ValueError(f"domain {domain} is not among this counter's {self.domains} domains")
        if pre.stride(-1) != 1:
            pre = pre.contiguous()
        rows = tuple(pre.shape[:-1])
        if not isinstance(positions, BatchRows):
            batch = self.batch_rows(positions, counted_mask, rows=rows)
        elif counted_mask is not None:
            raise ValueError("with BatchRows, give the counted mask to batch_rows, not to update")
        elif (positions.shape, positions.max_positions, positions.positions.device) != (rows, self.max_positions,
                                                                                        self.device):
            raise ValueError(f"these BatchRows are for rows {positions.shape}, {positions.max_positions} positions "
                             f"on {positions.positions.device}; the activations have rows {rows} and the counter "
                             f"{self.max_positions} positions on {self.device}")
        else:
            batch = positions
        bits = None
        if self.keep_bits:
            bits = torch.empty(rows + (words_for(self.num_neurons),), dtype=torch.int64, device=self.device)
        pos_table = self._positions_table(batch.most_at_a_position)
        count_activations_checked(pre, batch.positions, batch.counted, self.threshold, self._domain_rows[domain],
                                  pos_table, bits=bits, nan_count=self.nan_count)
        self._domain_token_rows[domain].add_(batch.num_counted)
        self.pos_seen += batch.per_position
        if pos_table is self._pos_recent:
            self._recent_bound += batch.most_at_a_position
        return bits

    def batch_rows(self, positions, counted_mask=None, *, rows=None) -> BatchRows:
        """``positions`` (and ``counted_mask``) as `update` takes them, checked and prepared once: pass
        the result to the ``update`` of every counter with this device and ``max_positions``."""
        positions = torch.as_tensor(positions, device=self.device)
        rows = tuple(positions.shape) if rows is None else tuple(rows)
        positions = self._rows(positions, rows, "positions").to(torch.int32).contiguous()
        nonpad = positions >= 0
        if counted_mask is None:
            counted = positions >= 1
        else:
            counted = self._rows(counted_mask, rows, "counted_mask").to(torch.bool) & nonpad
        in_table = nonpad & (positions < self.max_positions)
        index = positions.clamp(0, self.max_positions - 1).reshape(-1).long()
        per_position = torch.zeros(self.max_positions, dtype=torch.int64, device=self.device)
        per_position.scatter_add_(0, index, in_table.reshape(-1).long())
        most = None
        if self.device.type == "cpu":
            check_positions_in_table(positions, self.max_positions)
            most = int(per_position.max())
        return BatchRows(rows, positions, counted.contiguous(), per_position, counted.sum(), self.max_positions, most)

    def _scratch(self) -> torch.Tensor:
        """The [T, F] table the kernel needs when positions are not kept: one per shape and device
        (uint16 on the CPU: never read, so its wrapping does not matter)."""
        key = (str(self.device), self.max_positions, self.num_neurons)
        scratch = _SCRATCH.get(key)
        if scratch is None:
            dtype = torch.uint16 if self.device.type == "cpu" else torch.int64
            scratch = torch.zeros(self._table_shape, dtype=dtype, device=self.device)
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
        self._on_device: dict[tuple, BatchRows] = {}  # (device, rows, max_positions) -> the current batch
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

    def _batch_for(self, tensor: torch.Tensor, counter: NeuronCounter) -> BatchRows:
        """The rows of the batch ``tensor`` belongs to, prepared once per batch, device and row shape."""
        rows = tuple(tensor.shape[:-1])
        if self.settings.positions is not None:
            result = self.settings.positions(tensor)
            positions, counted = result if isinstance(result, tuple) else (result, None)
            positions = torch.as_tensor(positions, device=tensor.device)
            if counted is None:
                counted = positions >= (0 if self.settings.count_bos else 1)
            return counter.batch_rows(positions, counted, rows=rows)
        if self._batch is None:
            raise ValueError("no batch positions: call handle.set_batch(attention_mask) before the forward pass")
        key = (tensor.device, rows, counter.max_positions)
        if key not in self._on_device:
            positions, counted = (t.to(tensor.device) for t in self._batch)
            self._on_device[key] = counter.batch_rows(positions, counted, rows=rows)
        return self._on_device[key]

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
        bits = counter.update(tensor, self._batch_for(tensor, counter), domain=self._domain)
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
