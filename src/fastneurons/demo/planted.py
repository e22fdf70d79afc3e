"""The planted OPT: a real `OPTForCausalLM` whose layer-0 neurons are built so the right answers are known.

Layer 0 sees `h = embed_tokens[x] + embed_positions[p + 2]` exactly (its attention output is zeroed) and
every coordinate of `h` is +1 or -1 in mirrored pairs, so `final_layer_norm` only divides `h` by one
constant and the sign of every layer-0 pre-activation follows an exact integer rule (docs/planted.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch

MIN_RUN = 16  # SPEC §3 `--min-run`: shortest on/off range that counts for positional types
MIN_BITS = 4  # fewest "other token" sign bits a model may have (clean neurons read them)
FC2_SCALE = 1.0  # alpha: size of a detector's update along its flag direction
INIT_STD = 0.02  # std of the random weights that carry no planted content


@dataclass(frozen=True)
class PlantSpec:
    """What to plant. Neuron indices are in layer 0 unless said; validated on construction."""

    vocab_size: int = 50257
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    pad_token_id: int = 50256
    hidden_size: int = 64
    ffn_dim: int = 256
    num_layers: int = 4
    num_heads: int = 4
    max_positions: int = 256
    detectors: Mapping[int, tuple[int, ...]] = field(default_factory=dict)  # neuron -> trigger ids
    promoting: tuple[int, ...] = ()  # detectors whose update promotes (not suppresses) their triggers
    dead: tuple[int, ...] = ()
    dead_later_layers: Mapping[int, tuple[int, ...]] = field(default_factory=dict)  # layer >= 1 -> neurons
    oscillatory: Mapping[int, int] = field(default_factory=dict)  # neuron -> even period >= 2 * min_run
    steps: Mapping[int, int] = field(default_factory=dict)  # neuron -> b: fires iff p < b
    one_extreme: Mapping[int, int] = field(default_factory=dict)  # neuron -> r < min_run: fires iff p >= r
    min_run: int = MIN_RUN
    seed: int = 0

    def __post_init__(self):
        _validate(self)

    @property
    def positional_neurons(self) -> tuple[int, ...]:
        """Layer-0 neurons that fire by position only, sorted."""
        return tuple(sorted({*self.oscillatory, *self.steps, *self.one_extreme}))

    @property
    def num_bits(self) -> int:
        """Number of random +-1 "other token" features; they fill the dimensions left over."""
        return self.hidden_size // 2 - len(self.detectors) - len(self.positional_neurons)


@dataclass(frozen=True)
class PositionalTruth:
    """A planted positional neuron as SPEC §3 classifies its exact 0/1 firing profile."""

    kind: str  # "oscillatory" | "both_extremes" | "one_extreme"
    strength: str  # "strong": fr(p) is exactly 0 or 1, so the strong level already finds the ranges
    on_ranges: tuple[tuple[int, int], ...]  # inclusive [start, end], runs of at least min_run
    off_ranges: tuple[tuple[int, int], ...]
    mutual_information: float  # I(act; pos) in nats over the positions kept


@dataclass(frozen=True)
class PlantedTruth:
    """What the analyses must find on data from the planted model (layer 0, plus dead later neurons)."""

    detectors: dict[int, frozenset[int]]  # layer-0 neuron -> its trigger token ids
    suppresses: dict[int, bool]  # layer-0 detector -> True if its update suppresses its triggers
    dead: dict[int, frozenset[int]]  # layer -> dead neurons (layer 0 included)
    positional: dict[int, PositionalTruth]  # layer-0 neuron -> its positional type
    clean: frozenset[int]  # layer-0 neurons that are none of the above (fire on about half the tokens)
    num_positions: int  # T the positional truth was computed for


@dataclass(frozen=True)
class _Plan:
    """The integer design derived from a spec: which +-1 value each feature takes, per token."""

    detectors: tuple[int, ...]  # sorted detector neurons; flag feature i belongs to detectors[i]
    positional: tuple[int, ...]  # sorted positional neurons; position feature m
    clean: tuple[int, ...]
    token_flags: np.ndarray  # int8 [V, K]: +1 iff the token triggers detector i
    token_bits: np.ndarray  # int8 [V, B]: random +-1 content of every token
    clean_weights: np.ndarray  # int8 [len(clean), B]: odd number of +-1 entries, rest 0
    row_scale: np.ndarray  # float64 [F]: positive size of each fc1 row (sign-neutral)
    bit_mix: np.ndarray  # float64 [K, B]: small tie-breaking part of each detector's update, L1 = alpha/2


def _validate(spec: PlantSpec) -> None:
    """Raise ValueError with a one-line reason for any spec that cannot be planted exactly."""
    for name in ("vocab_size", "hidden_size", "ffn_dim", "num_layers", "num_heads", "max_positions",
                 "min_run"):
        value = getattr(spec, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"PlantSpec.{name} must be a positive int, got {value!r}")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(spec, name)
        if not 0 <= value < spec.vocab_size:
            raise ValueError(f"PlantSpec.{name}={value} is outside the vocabulary [0, {spec.vocab_size})")
    if spec.hidden_size % spec.num_heads:
        raise ValueError(f"hidden_size {spec.hidden_size} must be divisible by num_heads {spec.num_heads}")
    groups = {"detectors": spec.detectors, "dead": spec.dead, "oscillatory": spec.oscillatory,
              "steps": spec.steps, "one_extreme": spec.one_extreme}
    owner: dict[int, str] = {}
    for group, neurons in groups.items():
        for n in neurons:
            if not isinstance(n, (int, np.integer)) or not 0 <= n < spec.ffn_dim:
                raise ValueError(f"{group} neuron {n!r} is outside layer 0's neurons [0, {spec.ffn_dim})")
            if n in owner:
                raise ValueError(f"neuron {n} is planted twice ({owner[n]} and {group}); use distinct neurons")
            owner[n] = group
    if len(set(spec.dead)) != len(spec.dead):
        raise ValueError(f"dead lists a neuron twice: {spec.dead}")
    for n, triggers in spec.detectors.items():
        if len(triggers) == 0:
            raise ValueError(f"detector {n} has no trigger tokens; give it at least one id")
        bad = [t for t in triggers if not 0 <= t < spec.vocab_size]
        if bad:
            raise ValueError(f"detector {n} has trigger ids {bad} outside the vocabulary [0, {spec.vocab_size})")
        if len(triggers) >= spec.vocab_size:
            raise ValueError(f"detector {n} triggers on the whole vocabulary; it would not be a detector")
    stray = [n for n in spec.promoting if n not in spec.detectors]
    if stray:
        raise ValueError(f"promoting lists {stray}, which are not detectors")
    for layer, neurons in spec.dead_later_layers.items():
        if not 1 <= layer < spec.num_layers:
            raise ValueError(f"dead_later_layers key {layer} must be a layer in [1, {spec.num_layers})")
        bad = [n for n in neurons if not 0 <= n < spec.ffn_dim]
        if bad:
            raise ValueError(f"dead_later_layers[{layer}] has neurons {bad} outside [0, {spec.ffn_dim})")
    for n, period in spec.oscillatory.items():
        if period % 2 or period < 2 * spec.min_run:
            raise ValueError(f"oscillatory neuron {n}: period {period} must be even and >= 2*min_run "
                             f"= {2 * spec.min_run}")
    for n, b in spec.steps.items():
        if not spec.min_run <= b <= spec.max_positions - spec.min_run:
            raise ValueError(f"step neuron {n}: boundary {b} must leave >= min_run={spec.min_run} positions "
                             f"on each side, i.e. lie in [{spec.min_run}, {spec.max_positions - spec.min_run}]")
    for n, r in spec.one_extreme.items():
        if not 1 <= r < spec.min_run:
            raise ValueError(f"one_extreme neuron {n}: silent prefix {r} must lie in [1, {spec.min_run})")
    if spec.num_bits < MIN_BITS:
        need = 2 * (len(spec.detectors) + len(spec.positional_neurons) + MIN_BITS)
        raise ValueError(f"hidden_size {spec.hidden_size} is too small for {len(spec.detectors)} detectors and "
                         f"{len(spec.positional_neurons)} positional neurons; use hidden_size >= {need}")
    planned = {**{n: "oscillatory" for n in spec.oscillatory}, **{n: "both_extremes" for n in spec.steps},
               **{n: "one_extreme" for n in spec.one_extreme}}
    for n, kind in planned.items():
        found = _classify(positional_profile(spec, n, spec.max_positions), spec.min_run)[0]
        if found != kind:
            raise ValueError(f"positional neuron {n} looks '{found}', not '{kind}', over max_positions="
                             f"{spec.max_positions}; use a shorter period or more positions")


def positional_profile(spec: PlantSpec, neuron: int, num_positions: int | None = None) -> np.ndarray:
    """Bool [T]: whether layer-0 positional `neuron` fires at positions 0..T-1 (any token)."""
    p = np.arange(spec.max_positions if num_positions is None else num_positions)
    if neuron in spec.oscillatory:
        return (p // (spec.oscillatory[neuron] // 2)) % 2 == 0
    if neuron in spec.steps:
        return p < spec.steps[neuron]
    if neuron in spec.one_extreme:
        return p >= spec.one_extreme[neuron]
    raise ValueError(f"neuron {neuron} is not a planted positional neuron")


def _runs(profile: np.ndarray, value: bool, min_run: int) -> list[tuple[int, int]]:
    """Maximal runs [start, end] (inclusive) of `value` in `profile` lasting at least min_run positions."""
    runs, start = [], None
    for p, v in enumerate(list(profile) + [not value]):
        if v == value and start is None:
            start = p
        elif v != value and start is not None:
            if p - start >= min_run:
                runs.append((start, p - 1))
            start = None
    return runs


def _classify(profile: np.ndarray, min_run: int):
    """SPEC §3 positional type of an exact 0/1 profile: (kind, on_ranges, off_ranges)."""
    on, off = _runs(profile, True, min_run), _runs(profile, False, min_run)
    labels = [label for _, label in sorted([(r[0], "on") for r in on] + [(r[0], "off") for r in off])]
    alternations = sum(a != b for a, b in zip(labels, labels[1:]))
    if alternations >= 3:
        kind = "oscillatory"
    elif on and off:
        kind = "both_extremes"
    elif on or off:
        kind = "one_extreme"
    else:
        kind = "other"
    return kind, tuple(on), tuple(off)


def _mutual_information(profile: np.ndarray) -> float:
    """SPEC §3 I(act; pos) in nats for a firing-rate profile fr(p), with 0 log 0 = 0."""
    fr = profile.astype(np.float64)

    def part(a: np.ndarray) -> np.ndarray:  # a(p) * log(a(p) / mean(a)), 0 where a(p) = 0
        mean = a.mean()
        return np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0) / max(mean, 1e-300)), 0.0)

    return float(np.mean(part(fr) + part(1.0 - fr)))


def _plan(spec: PlantSpec) -> _Plan:
    """Derive the deterministic integer design (token features, clean rules) from the spec and its seed."""
    rng = np.random.default_rng(spec.seed)
    detectors = tuple(sorted(spec.detectors))
    positional = spec.positional_neurons
    planted = {*detectors, *positional, *spec.dead}
    clean = tuple(n for n in range(spec.ffn_dim) if n not in planted)
    num_bits = spec.num_bits

    token_flags = np.full((spec.vocab_size, len(detectors)), -1, dtype=np.int8)
    for i, n in enumerate(detectors):
        token_flags[list(spec.detectors[n]), i] = 1
    token_bits = rng.choice(np.array([-1, 1], dtype=np.int8), size=(spec.vocab_size, num_bits))

    clean_weights = np.zeros((len(clean), num_bits), dtype=np.int8)
    odd_counts = np.arange(1, min(num_bits, 7) + 1, 2)
    for row in clean_weights:
        dims = rng.choice(num_bits, size=rng.choice(odd_counts), replace=False)
        row[dims] = rng.choice(np.array([-1, 1], dtype=np.int8), size=len(dims))
    row_scale = rng.uniform(0.5, 1.5, size=spec.ffn_dim)
    bit_mix = rng.normal(size=(len(detectors), num_bits))
    bit_mix *= (FC2_SCALE / 2) / np.maximum(np.abs(bit_mix).sum(axis=1, keepdims=True), 1e-12)
    return _Plan(detectors, positional, clean, token_flags, token_bits, clean_weights, row_scale, bit_mix)


def layer0_active(spec: PlantSpec, token_ids, positions) -> np.ndarray:
    """Bool [..., ffn_dim]: the exact planted rule for fc1(x)[n] > 0 in layer 0 (padding, p < 0, is False).

    Computed from the integer design, not from the model, so tests can hold the model against it.
    """
    tokens = np.asarray(token_ids, dtype=np.int64)
    pos = np.asarray(positions, dtype=np.int64)
    if tokens.shape != pos.shape:
        raise ValueError(f"token_ids shape {tokens.shape} and positions shape {pos.shape} must match")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= spec.vocab_size):
        raise ValueError(f"token ids must lie in [0, {spec.vocab_size})")
    if pos.size and pos.max() >= spec.max_positions:
        raise ValueError(f"positions must be < max_positions={spec.max_positions} (-1 marks padding)")
    plan = _plan(spec)
    out = np.zeros(tokens.shape + (spec.ffn_dim,), dtype=bool)
    out[..., list(plan.detectors)] = plan.token_flags[tokens] > 0
    if plan.clean:
        votes = plan.token_bits[tokens].astype(np.int32) @ plan.clean_weights.astype(np.int32).T
        out[..., list(plan.clean)] = votes > 0
    if plan.positional:
        table = np.stack([positional_profile(spec, n) for n in plan.positional], axis=1)
        out[..., list(plan.positional)] = table[np.maximum(pos, 0)]
    out[pos < 0] = False
    return out


def _embedding_tables(spec: PlantSpec, plan: _Plan) -> tuple[np.ndarray, np.ndarray]:
    """Token table [V, d] and position table [max_positions + 2, d]: +-1 features in mirrored pairs."""
    k, b = len(plan.detectors), spec.num_bits
    tokens = np.zeros((spec.vocab_size, spec.hidden_size), dtype=np.float32)
    features = np.concatenate([plan.token_flags, plan.token_bits], axis=1).astype(np.float32)
    tokens[:, 0:2 * (k + b):2] = features
    tokens[:, 1:2 * (k + b):2] = -features
    positions = np.zeros((spec.max_positions + 2, spec.hidden_size), dtype=np.float32)
    if plan.positional:
        signs = np.stack([positional_profile(spec, n) for n in plan.positional], axis=1)
        signs = np.where(signs, 1.0, -1.0).astype(np.float32)
        first = 2 * (k + b)
        positions[2:, first:first + 2 * len(plan.positional):2] = signs
        positions[2:, first + 1:first + 2 * len(plan.positional):2] = -signs
        positions[:2] = positions[2]  # rows 0, 1 (padding gets p = -1 -> row 1) copy position 0
    return tokens, positions


def _layer0_ffn(spec: PlantSpec, plan: _Plan) -> tuple[np.ndarray, ...]:
    """fc1 weight/bias and fc2 weight of layer 0 (fc2 bias is zero) implementing the planted rules."""
    k, b, d, f = len(plan.detectors), spec.num_bits, spec.hidden_size, spec.ffn_dim
    fc1_w = np.zeros((f, d), dtype=np.float64)
    fc1_b = np.zeros(f, dtype=np.float64)

    def read(neuron, feature, weight=1.0):  # a +w / -w pair reads feature value s as 2 * w * s
        fc1_w[neuron, 2 * feature] = weight
        fc1_w[neuron, 2 * feature + 1] = -weight

    for i, n in enumerate(plan.detectors):
        read(n, i)
    for j, n in enumerate(plan.clean):
        for bit in np.flatnonzero(plan.clean_weights[j]):
            read(n, k + bit, float(plan.clean_weights[j, bit]))
    for m, n in enumerate(plan.positional):
        read(n, k + b + m)
    fc1_b[list(spec.dead)] = -1.0
    fc1_w *= plan.row_scale[:, None]
    fc1_b *= plan.row_scale

    rng = np.random.default_rng([spec.seed, 1])
    fc2_w = rng.normal(0.0, INIT_STD, size=(d, f))
    for i, n in enumerate(plan.detectors):
        sign = 1.0 if n in spec.promoting else -1.0
        column = np.zeros(d)
        column[2 * i] = sign * FC2_SCALE  # s[x] = e(x) . v = 2 * sign * alpha * flag_i(x) + bits . mix
        column[2 * i + 1] = -sign * FC2_SCALE
        column[2 * k:2 * (k + b):2] = plan.bit_mix[i]
        fc2_w[:, n] = column
    return fc1_w, fc1_b, fc2_w


def build_planted_opt(spec: PlantSpec):
    """A real OPTForCausalLM (pre-LN, ReLU, eval mode, float32) carrying the planted neurons of `spec`."""
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, ffn_dim=spec.ffn_dim,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions, word_embed_proj_dim=spec.hidden_size,
        do_layer_norm_before=True, enable_bias=True, activation_function="relu",
        dropout=0.0, attention_dropout=0.0, layerdrop=0.0, tie_word_embeddings=True,
        bos_token_id=spec.bos_token_id, eos_token_id=spec.eos_token_id, pad_token_id=spec.pad_token_id,
    )
    model = OPTForCausalLM(config)
    plan = _plan(spec)
    tokens, positions = _embedding_tables(spec, plan)
    fc1_w, fc1_b, fc2_w = _layer0_ffn(spec, plan)
    generator = torch.Generator().manual_seed(spec.seed)
    decoder = model.model.decoder

    def tensor(array):
        return torch.as_tensor(np.asarray(array), dtype=torch.float32)

    with torch.no_grad():
        for module in decoder.modules():  # random weights for everything without planted content
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, INIT_STD, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
        decoder.embed_tokens.weight.copy_(tensor(tokens))
        decoder.embed_positions.weight.copy_(tensor(positions))
        layer0 = decoder.layers[0]
        layer0.self_attn.out_proj.weight.zero_()  # attention adds exactly 0: h = token + position
        layer0.self_attn.out_proj.bias.zero_()
        layer0.fc1.weight.copy_(tensor(fc1_w))
        layer0.fc1.bias.copy_(tensor(fc1_b))
        layer0.fc2.weight.copy_(tensor(fc2_w))
        layer0.fc2.bias.zero_()
        for layer, neurons in spec.dead_later_layers.items():
            fc1 = decoder.layers[layer].fc1
            fc1.weight[list(neurons)] = 0.0
            fc1.bias[list(neurons)] = -1.0
        if model.lm_head.weight.data_ptr() != decoder.embed_tokens.weight.data_ptr():
            model.lm_head.weight.copy_(decoder.embed_tokens.weight)
    return model.float().eval()


def expected(spec: PlantSpec, num_positions: int | None = None) -> PlantedTruth:
    """What the analyses must find; positional truth over positions 0..num_positions-1 (default: all)."""
    plan = _plan(spec)
    t = spec.max_positions if num_positions is None else num_positions
    if not 1 <= t <= spec.max_positions:
        raise ValueError(f"num_positions must lie in [1, {spec.max_positions}], got {t}")
    positional = {}
    for n in plan.positional:
        profile = positional_profile(spec, n, t)
        kind, on, off = _classify(profile, spec.min_run)
        strength = "strong" if on or off else ("strong" if _smooth(profile) else "weak")
        positional[n] = PositionalTruth(kind, strength, on, off, _mutual_information(profile))
    dead = {0: frozenset(spec.dead), **{l: frozenset(ns) for l, ns in spec.dead_later_layers.items()}}
    return PlantedTruth(
        detectors={n: frozenset(int(x) for x in spec.detectors[n]) for n in plan.detectors},
        suppresses={n: n not in spec.promoting for n in plan.detectors},
        dead=dead, positional=positional, clean=frozenset(plan.clean), num_positions=t,
    )


def _smooth(profile: np.ndarray, tolerance: float = 0.02) -> bool:
    """SPEC §3 smoothness of an 'other' profile: mean |fr(p) - (fr(p-1) + fr(p+1)) / 2| <= tolerance."""
    fr = profile.astype(np.float64)
    if len(fr) < 3:
        return True
    return float(np.mean(np.abs(fr[1:-1] - (fr[:-2] + fr[2:]) / 2))) <= tolerance


DEFAULT_DETECTOR_NEURONS = (10, 19, 28, 37, 46, 55, 64, 73)


def default_spec(trigger_ids, **overrides) -> PlantSpec:
    """The demo's spec: detectors on groups of up to 3 of `trigger_ids` (the last one promotes), 3 dead
    neurons, oscillatory / step / one-extreme positional neurons, and 3 dead neurons in layer 1.

    `overrides` are PlantSpec fields (shape, seed, ids); positional boundaries follow max_positions.
    """
    ids = [int(t) for t in trigger_ids]
    if not ids:
        raise ValueError("default_spec needs at least one trigger token id")
    groups = [tuple(ids[i:i + 3]) for i in range(0, len(ids), 3)]
    if len(groups) > len(DEFAULT_DETECTOR_NEURONS):
        raise ValueError(f"default_spec plants at most {3 * len(DEFAULT_DETECTOR_NEURONS)} trigger ids, "
                         f"got {len(ids)}; build a PlantSpec directly for more")
    detectors = dict(zip(DEFAULT_DETECTOR_NEURONS, groups))
    t = overrides.get("max_positions", PlantSpec.max_positions)
    min_run = overrides.get("min_run", MIN_RUN)
    if t < 4 * min_run:
        raise ValueError(f"default_spec needs max_positions >= {4 * min_run} for an oscillatory neuron, got {t}")
    oscillatory = {20: 2 * min_run}
    if t >= 8 * min_run:
        oscillatory[21] = 4 * min_run
    values = dict(
        detectors=detectors,
        promoting=(DEFAULT_DETECTOR_NEURONS[len(groups) - 1],) if len(groups) > 1 else (),
        dead=(3, 30, 77),
        dead_later_layers={1: (5, 6, 60)} if overrides.get("num_layers", PlantSpec.num_layers) > 1 else {},
        oscillatory=oscillatory,
        steps={40: max(min_run, (3 * t) // 8)},
        one_extreme={50: max(1, (3 * min_run) // 4)},
    )
    values.update(overrides)
    return PlantSpec(**values)
