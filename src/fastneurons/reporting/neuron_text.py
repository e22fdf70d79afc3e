"""`fastneurons show`: a `NeuronProfile` as plain text for the terminal (the command only prints this)."""
from __future__ import annotations

from fastneurons.reporting.outputs import show_text

TOKENS_SHOWN = 10  # promoted / suppressed tokens printed


def _percent(value: float) -> str:
    return f"{100 * value:.3g}%"


def _ngram_text(ngram) -> str:
    if ngram.tokens is None:
        return " ".join(f"<{i}>" for i in ngram.ids)
    return show_text("".join(ngram.tokens)) + f" {ngram.ids}"


def _coverage_text(p) -> str:
    """'= c', 'in [lo, hi]' or '>= lo' (bounded stores whose summary cut the neuron)."""
    if p.coverage_upper == p.coverage_size:
        return f"= {p.coverage_size}"
    if p.coverage_upper is None:
        return f">= {p.coverage_size}"
    return f"in [{p.coverage_size}, {p.coverage_upper}]"


def _ngram_lines(profile) -> list:
    lines = []
    for p in profile.ngrams:
        verdict = "DETECTOR" if p.detector else ("candidate, not a detector" if p.candidate else "not a detector")
        if p.uncertain:
            verdict = "undecided (the bounded summary cannot settle it: see docs/bounded-ngrams.md)"
        share = f", G(n) holds {_percent(p.covered_share)} of A" if p.covered_share is not None else ""
        lines.append(f"k={p.k}: C_{p.k} {_coverage_text(p)}, A_{p.k} = {p.mass}, {p.distinct} distinct "
                     f"{p.k}-grams held -> {verdict}{share}")
        if p.lower_bounds:
            lines.append(f"  counts below are lower bounds, each at most {p.count_bound} under the truth; an "
                         f"n-gram not listed fired it at most {p.count_bound} times")
        if p.detector:
            lines.append(f"  triggers G(n) ({len(p.triggers)}): " + ", ".join(
                f"{_ngram_text(t)} {t.active}/{t.seen}" for t in p.triggers))
        for t in p.top:
            mark = "*" if t.covered else " "
            lines.append(f"  {mark} {t.active:>8d} / {t.seen:<8d} {_ngram_text(t)}")
    return lines


def _positional_lines(pos) -> list:
    if pos is None:
        return ["positions: not recorded (--no-positions)"]
    kind = f"POSITIONAL, {pos.strength} {pos.type}" if pos.positional else "not positional"
    null = "" if pos.corrected is None else (f"; bootstrap null p = {pos.mi_pvalue:.3g}"
                                             f" ({'above' if pos.corrected else 'not above'} its null quantile)")
    return [f"fr(p) over {pos.positions_kept} positions (p = 0 is BOS): mean {pos.mean_fr:.4f}, min {pos.min_fr:.4f} at p={pos.argmin}, "
            f"max {pos.max_fr:.4f} at p={pos.argmax}",
            f"I(act; pos) = {pos.mi:.4f} (threshold {pos.mi_threshold}) -> {kind}{null}"]


def _projection_lines(projection) -> list:
    if projection is None:
        return ["vocabulary projection: no weights (pass --model)"]

    def listed(entries):
        return ", ".join(f"{show_text(text) if text is not None else f'<{i}>'} {score:+.3f}"
                         for i, text, score in entries[:TOKENS_SHOWN])

    lines = [f"promotes:   {listed(projection.promoted)}", f"suppresses: {listed(projection.suppressed)}"]
    if projection.trigger_mean_score is not None:
        lines.append(f"its triggers score {projection.trigger_mean_score:+.4f} on average -> "
                     f"{'suppresses' if projection.suppresses_triggers else 'does not suppress'} its triggers")
    return lines


def format_profile(profile) -> str:
    """The profile as a few labelled blocks: activity, domains, n-grams (C_k, triggers, top), positions, projection."""
    lines = [f"layer {profile.layer} neuron {profile.neuron}" + (f"  ({profile.neuron_definition})"
                                                                 if profile.neuron_definition else ""),
             f"active on {profile.active} of {profile.tokens} counted tokens: frequency {profile.frequency:.5f}"
             + (" (DEAD)" if profile.dead else "")]
    for d in profile.domains:
        lines.append(f"  {d['domain']}: {d['active']} / {d['tokens']} = {d['frequency']:.5f}")
    lines += ["", "n-grams (* = covered: active >= cover_rate x seen; counts are active / seen):"]
    lines += _ngram_lines(profile) or ["  no n-gram tables for this layer"]
    lines += [""] + _positional_lines(profile.positional) + [""] + _projection_lines(profile.projection)
    return "\n".join(lines)


def show_neuron(config) -> str:
    """`fastneurons show` (a `ShowConfig`): open the store, load weights if asked, profile, format as text or JSON."""
    import json

    from fastneurons.analysis.neuron import neuron_profile
    from fastneurons.config import AnalyzeConfig
    from fastneurons.reporting.analyze import load_weights
    from fastneurons.store import open_counts

    with open_counts(config.store) as counts:
        weights = None
        if config.model is not None:
            spec = None if config.model == "recorded" else config.model
            weights, _, why = load_weights(counts, AnalyzeConfig(counts=[config.store], model=spec))
            if weights is None:
                raise ValueError(why)
        profile = neuron_profile(counts, config.layer, config.neuron, config.settings, weights=weights, top=config.top)
    return json.dumps(profile.to_dict()) if config.json else format_profile(profile)
