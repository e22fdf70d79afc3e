"""Counter-by-counter comparison of a store with the plain way's counts, or with another store.

The one definition of "these counts are the same" that the bench's correctness check, the recording
tests and benchmarks/same_counters_across_code.py all use: every counter by name, exact equality.
"""
from __future__ import annotations

import numpy as np

from fastneurons.store import open_counts


def store_counters(counts) -> dict:
    """Every counter of an open store by name (n-gram tables as their columns)."""
    named = {"tokens": counts.tokens, "pos_seen": counts.pos_seen, "domain_tokens": counts.domain_tokens,
             "layers": counts.layers, "ngram_layers": counts.ngram_layers}
    for layer in counts.layers:
        named[f"active[{layer}]"] = counts.active(layer)
        named[f"domain_active[{layer}]"] = counts.domain_active(layer)
        if counts.has_positions:
            named[f"pos_active[{layer}]"] = counts.pos_active(layer)
    if counts.ngram_layers:
        for k in counts.ngram_orders:
            named.update(_columns(f"ngram_seen[{k}]", ("key", "count"), counts.ngram_seen(k)))
            for layer in counts.ngram_layers:
                named.update(_columns(f"ngram_active[{layer},{k}]", ("key", "neuron", "count"),
                                      counts.ngram_active(layer, k)))
    return named


def plain_counters(plain) -> dict:
    """The same names for `PlainCounts` (the plain way has no per-domain counters)."""
    named = {"tokens": plain.tokens, "pos_seen": plain.pos_seen, "layers": sorted(plain.active),
             "ngram_layers": sorted({layer for layer, _ in plain.ngram_active})}
    for layer in plain.active:
        named[f"active[{layer}]"] = plain.active[layer]
        named[f"pos_active[{layer}]"] = plain.pos_active[layer]
    for k, table in plain.ngram_seen.items():
        named.update(_columns(f"ngram_seen[{k}]", ("key", "count"), table))
    for (layer, k), table in plain.ngram_active.items():
        named.update(_columns(f"ngram_active[{layer},{k}]", ("key", "neuron", "count"), table))
    return named


def _columns(name, parts, arrays) -> dict:
    return {f"{name}.{part}": array for part, array in zip(parts, arrays)}


def differences(ours: dict, theirs: dict, names=None) -> list:
    """Names (of ``names``, default all on either side) missing on one side or unequal in shape or value."""
    names = sorted(set(ours) | set(theirs)) if names is None else names
    return [name for name in names
            if name not in ours or name not in theirs or not _equal(ours[name], theirs[name])]


def _equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and np.array_equal(a, b)


def plain_differences(store, plain) -> list:
    """Counters in which a store and the plain way's counts differ ([] when every one is equal)."""
    theirs = plain_counters(plain)
    with open_counts(store) as counts:
        return differences(store_counters(counts), theirs, names=list(theirs))


def store_differences(a, b) -> list:
    """Counters in which two stores differ ([] when every one, per-domain included, is equal)."""
    with open_counts(a) as x, open_counts(b) as y:
        return differences(store_counters(x), store_counters(y))


def compare_counts(store, plain) -> dict:
    """The bench's verdict: whether a store equals the plain way in every counter, first difference named."""
    theirs = plain_counters(plain)
    with open_counts(store) as counts:
        problems = differences(store_counters(counts), theirs, names=list(theirs))
        rows = sum(len(counts.ngram_active(layer, k)[0]) for layer in counts.ngram_layers for k in counts.ngram_orders)
    verdict = {"identical": not problems, "arrays_checked": len(theirs),
               "first_difference": problems[0] if problems else None}
    if not problems:
        verdict["ngram_rows"] = int(rows)
    return verdict
