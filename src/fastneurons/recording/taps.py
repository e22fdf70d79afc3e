"""What a recording counts with: a micro-batch on the device, the `Recording` it belongs to, the
counters on the recorded layers' neuron modules (`LayerTaps`, through the public `attach_counters`) and
the n-gram state their bits feed (`NgramFeed`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fastneurons.config import RecordConfig
from fastneurons.kernels import PinnedHostCopies
from fastneurons.models import architectures as archs
from fastneurons.models.loading import LoadedModel
from fastneurons.ngrams.accumulator import NgramAccumulator, SeenAccumulator
from fastneurons.ngrams.by_neuron import release_scratch
from fastneurons.recording.corpus import CorpusPlan
from fastneurons.recording.counter import attach_counters
from fastneurons.store import DenseCounts


@dataclass
class MicroBatchTensors:
    """One micro-batch on the device: ids, mask, positions (-1 = pad) and the counted mask."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positions: torch.Tensor
    counted: torch.Tensor
    domain: int


@dataclass(frozen=True)
class Recording:
    """What one recording runs: its settings, the loaded model, the corpus plan, the layers and the device."""

    config: RecordConfig
    loaded: LoadedModel
    tokenizer: object  # None: pre-tokenized id corpora only
    plan: CorpusPlan
    layers: list
    ngram_layers: list
    seq_len: int
    pack_bits: int
    device: torch.device
    dtype: torch.dtype

    @property
    def model(self):
        return self.loaded.model

    @property
    def arch(self):
        return self.loaded.arch


class NgramFeed:
    """The n-gram state of a recording: one accumulator per n-gram layer fed with its activation bits,
    and the layer-independent seen counts fed with each micro-batch's token ids."""

    def __init__(self, ngram_layers, *, num_neurons: int, orders, pack_bits: int, make_accumulator=None,
                 count_seen: bool = True):
        # --ngrams switch: exact tables by default; bounded passes summaries (pass 1) or candidate counters (pass 2)
        make_accumulator = make_accumulator or (
            lambda layer: NgramAccumulator(num_neurons, orders=orders, pack_bits=pack_bits))
        self.layers = {layer: make_accumulator(layer) for layer in ngram_layers}
        self.seen = SeenAccumulator(orders=orders, pack_bits=pack_bits) if self.layers and count_seen else None
        self.host_copies = PinnedHostCopies()  # bits to the n-gram tables via pinned buffers
        self._tokens = None

    def select_tokens(self, cpu_arrays) -> None:
        """The micro-batch the next bits belong to: its flat (ids, positions, counted) CPU arrays."""
        self._tokens = cpu_arrays

    def add_tokens(self, cpu_arrays) -> None:
        """A new micro-batch: its flat (ids, positions, counted) CPU arrays, counted in the seen tables."""
        self.select_tokens(cpu_arrays)
        if self.seen is not None:
            self.seen.add(*cpu_arrays)

    def add_bits(self, layer: int, bits: torch.Tensor) -> None:
        """One n-gram layer's activation bits [..., W] on the current micro-batch."""
        ids, pos, counted = self._tokens
        accumulator = self.layers[layer]
        if getattr(accumulator, "takes_device_bits", False):  # bounded pass 1 on the device: no copy
            accumulator.add(bits, ids, pos, counted)
            return
        words = self.host_copies.copy(layer, bits).reshape(-1, bits.shape[-1]).numpy().view(np.uint64)
        accumulator.add(words, ids, pos, counted)

    @property
    def nbytes(self) -> int:
        return sum(acc.nbytes for acc in self.layers.values()) + (self.seen.nbytes if self.seen is not None else 0)

    def take_tables(self):
        """The n-gram tables built since the last call, {(layer, k): Table} and {k: SeenTable}."""
        tables = {(layer, k): table for layer, acc in self.layers.items() for k, table in acc.tables().items()}
        seen = self.seen.tables() if self.seen is not None else {}
        for acc in self.layers.values():
            acc.clear()
        if self.seen is not None:
            self.seen.clear()
        return tables, seen


class LayerTaps:
    """The recorded layers' counters: `attach_counters` on each layer's neuron module (the public path),
    started from the store's totals, with the n-gram layers' bits handed to an `NgramFeed`."""

    def __init__(self, recording: Recording, dense: DenseCounts, *, make_accumulator=None, count_seen: bool = True):
        model, arch, config = recording.model, recording.arch, recording.config
        gated = config.gated_product
        self.layers = list(recording.layers)
        module_names = {id(module): name for name, module in model.named_modules()}
        self.names = [module_names[id(archs.neuron_module(model, arch, layer, gated_product=gated))]
                      for layer in self.layers]
        num_neurons = dense.active.shape[1]
        self.ngrams = NgramFeed(recording.ngram_layers, num_neurons=num_neurons, orders=config.orders,
                                pack_bits=recording.pack_bits, make_accumulator=make_accumulator,
                                count_seen=count_seen)
        layer_of = dict(zip(self.names, self.layers))
        self.handle = attach_counters(
            model, self.names, max_positions=dense.pos_seen.shape[0], threshold=config.threshold,
            use_input=gated, transform=torch.abs if gated else None, count_bos=config.count_bos,
            device=recording.device, num_neurons=num_neurons, domains=len(dense.domain_tokens),
            count_positions=dense.pos_active is not None,
            keep_bits=[name for name in self.names if layer_of[name] in self.ngrams.layers],
            on_bits=lambda name, bits: self.ngrams.add_bits(layer_of[name], bits))
        self._pos_host = None  # CPU: the counters keep pos_active in one [L, T, F] array, no copy to stack
        if dense.pos_active is not None and recording.device.type == "cpu":
            # into torch's allocation: numpy madvises huge pages, whose compaction made this copy 0.3 s, not 0.07
            self._pos_host = torch.empty(dense.pos_active.shape, dtype=torch.int64)
            self._pos_host.numpy()[...] = dense.pos_active
        for row, name in enumerate(self.names):
            counter = self.handle.counters[name]
            counter.load_state(_layer_state(dense, row, with_positions=self._pos_host is None))
            if self._pos_host is not None:
                counter.count_positions_into(self._pos_host[row])

    def remove(self) -> None:
        self.handle.remove()

    def select(self, batch: MicroBatchTensors, cpu_arrays) -> None:
        """Make ``batch`` the micro-batch the hooks count, without counting its seen n-grams again
        (layer-major runs switch between a block's micro-batches at every layer)."""
        self.handle.set_positions(batch.positions, batch.counted, domain=batch.domain)
        self.ngrams.select_tokens(cpu_arrays)

    def set_batch(self, batch: MicroBatchTensors, cpu_arrays) -> None:
        """A new micro-batch: the following forward counts it, and its seen n-grams are counted (once)."""
        self.handle.set_positions(batch.positions, batch.counted, domain=batch.domain)
        self.ngrams.add_tokens(cpu_arrays)

    def finish(self) -> None:
        """The recording ended (its last units are in): bounded mode folds what its summaries hold
        pending, then frees the arrays its folds shared across layers."""
        for accumulator in self.ngrams.layers.values():
            if hasattr(accumulator, "finish"):
                accumulator.finish()
        release_scratch()

    def ngram_bytes(self) -> int:
        return self.ngrams.nbytes

    def take_tables(self):
        return self.ngrams.take_tables()

    def totals(self) -> DenseCounts:
        """The counters on the host (once per chunk), stacked as the store lays them out. On the CPU
        ``pos_active`` is the counters' own array, not a copy: write it before counting goes on."""
        counters = [self.handle.counters[name] for name in self.names]
        host = lambda name: np.stack([getattr(c, name).cpu().numpy() for c in counters])  # noqa: E731
        domain_tokens = counters[0].domain_tokens.cpu().numpy()  # every layer saw the same tokens
        domain_active = host("domain_active").transpose(1, 0, 2).copy()  # [D, L, F]
        if self._pos_host is not None:
            for counter in counters:
                counter.pos_active  # noqa: B018 (reading it adds the counter's recent uint16 counts in)
            pos_active = self._pos_host.numpy()
        else:
            pos_active = host("pos_active") if counters[0].pos_active is not None else None
        return DenseCounts(
            tokens=int(domain_tokens.sum()),
            pos_seen=counters[0].pos_seen.cpu().numpy(),
            active=domain_active.sum(axis=0),
            pos_active=pos_active,
            nan_count=host("nan_count").reshape(-1),
            domain_tokens=domain_tokens,
            domain_active=domain_active,
        )


def _layer_state(dense: DenseCounts, row: int, *, with_positions: bool = True) -> dict:
    """Row ``row`` of a store's dense totals, as one layer's counter state."""
    state = {"domain_tokens": dense.domain_tokens, "domain_active": dense.domain_active[:, row],
             "pos_seen": dense.pos_seen, "nan_count": dense.nan_count[row:row + 1]}
    if dense.pos_active is not None and with_positions:
        state["pos_active"] = dense.pos_active[row]
    return state


def _batch_tensors(micro, domain, count_bos, device):
    """Move a micro-batch to the device; also return its flat CPU arrays for the n-gram tables."""
    positions = micro.positions.to(torch.int32).contiguous()
    counted = positions >= (0 if count_bos else 1)
    cpu = (micro.input_ids.reshape(-1).numpy(), positions.reshape(-1).numpy(), counted.reshape(-1).numpy())
    batch = MicroBatchTensors(micro.input_ids.to(device), micro.attention_mask.to(device),
                              positions.to(device), counted.to(device), domain)
    return batch, cpu
