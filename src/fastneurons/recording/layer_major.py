"""Layer-major recording: a block of micro-batches passes through layer l before layer l+1 runs (SPEC §4).

Weights then cross to the device once per block instead of once per micro-batch. Generic over the
architecture table: the model's own forward runs once per micro-batch with each needed decoder
layer swapped for a recorder that keeps the arguments the model passes it (masks per layer type,
rotary cos/sin, positions) and hands its input on unchanged; then every real layer runs on every
micro-batch of the block, its hidden states replaced by the previous layer's output. Each
micro-batch keeps its own shape, so every layer computes exactly what the model's forward would.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from fastneurons.models.architectures import Architecture, base_model, decoder_layers, down_module


class _Captured(Exception):
    """Raised by the last needed layer's recorder: the rest of the forward is not needed."""


class _StopInLastLayer(Exception):
    """Raised before the last needed layer's down projection: its neurons were seen, its output is not needed."""


@dataclass
class LayerCall:
    """What the model passed one decoder layer besides the hidden states."""

    args: tuple            # positional arguments after the hidden states
    kwargs: dict
    hidden_keyword: bool   # the hidden states came as hidden_states=..., not first positional


class _ArgumentRecorder(torch.nn.Module):
    """Stands in for decoder layer `index` during capture: records its call, returns its input."""

    def __init__(self, layer: torch.nn.Module, index: int, last: int, calls: list):
        super().__init__()
        object.__setattr__(self, "_layer", layer)   # not a submodule: no hooks, no parameters
        self._index, self._last, self._calls = index, last, calls

    def __getattr__(self, name):   # attributes the model's loop reads, e.g. Gemma-2's attention_type
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_layer"), name)

    def forward(self, *args, **kwargs):
        if args:
            hidden, call = args[0], LayerCall(args[1:], kwargs, False)
        else:
            rest = dict(kwargs)
            hidden, call = rest.pop("hidden_states"), LayerCall((), rest, True)
        self._calls.append((hidden, call))
        if self._index == self._last:
            raise _Captured
        return hidden


def capture_layer_calls(model, arch: Architecture, input_ids, attention_mask, last_layer: int):
    """Run the model's forward on one micro-batch with layers 0..last_layer replaced by recorders.

    Returns (input hidden states of layer 0, [LayerCall for layers 0..last_layer]).
    """
    layers = decoder_layers(model, arch)
    originals = [layers[i] for i in range(last_layer + 1)]
    calls: list = []
    try:
        for i, layer in enumerate(originals):
            layers[i] = _ArgumentRecorder(layer, i, last_layer, calls)
        base_model(model, arch)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _Captured:
        pass
    else:
        raise RuntimeError(f"the forward ended without calling decoder layer {last_layer}")
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
    if len(calls) != last_layer + 1:
        raise RuntimeError(f"the forward called {len(calls)} decoder layers before layer {last_layer}, "
                           f"expected {last_layer + 1}: layer-major recording needs each layer called once")
    return calls[0][0], [call for _, call in calls]


def run_layer(layer: torch.nn.Module, hidden: torch.Tensor, call: LayerCall) -> torch.Tensor:
    """Call a decoder layer as the model's forward did, on `hidden`; its output hidden states."""
    if call.hidden_keyword:
        out = layer(*call.args, hidden_states=hidden, **call.kwargs)
    else:
        out = layer(hidden, *call.args, **call.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out   # older transformers return tuples


def run_block(model, arch: Architecture, batches: Sequence, last_layer: int, *,
              start: Callable[[int], None], select: Callable[[int], None], after: Callable[[], None]) -> None:
    """Run the micro-batches `batches` (each with .input_ids and .attention_mask) layer by layer.

    `start(i)` is called once per micro-batch before its capture (token-level counts), `select(i)`
    before micro-batch i runs a layer (the neuron hooks read it), `after()` after each layer call.
    Hidden states of the whole block stay where the model computes (the device). The last layer
    stops before its down projection, like `architectures.run_until`.
    """
    hidden, calls = [], []
    for i, batch in enumerate(batches):
        start(i)
        h, c = capture_layer_calls(model, arch, batch.input_ids, batch.attention_mask, last_layer)
        hidden.append(h)
        calls.append(c)
    layers = decoder_layers(model, arch)

    def stop(module, args):
        raise _StopInLastLayer

    handle = down_module(model, arch, last_layer).register_forward_pre_hook(stop)
    try:
        for index in range(last_layer + 1):
            for i in range(len(batches)):
                select(i)
                call, calls[i][index] = calls[i][index], None   # masks and cos/sin go once unused
                if index < last_layer:
                    hidden[i] = run_layer(layers[index], hidden[i], call)
                else:
                    try:
                        run_layer(layers[index], hidden[i], call)
                    except _StopInLastLayer:
                        pass
                    else:
                        raise RuntimeError(f"layer {last_layer} returned without calling {arch.down_module}")
                    hidden[i] = None
                after()
    finally:
        handle.remove()
