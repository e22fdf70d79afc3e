"""results.json and the CSV tables of `fastneurons analyze`: the analysis results as rows, and their writers.

The row builders (`headline_rows`, `detector_rows`, ...) are shared by the CSV files and the HTML
report, so both always show the same numbers. Token text is shown with `show_text` (quotes, with
newlines and tabs made visible).
"""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np

from fastneurons.analysis.detectors import token_texts
from fastneurons.analysis.positional import TYPES

TOP_TOKENS_SHOWN = 5  # promoted / suppressed tokens listed per detector in the tables


def show_text(text: str) -> str:
    """A token or n-gram as a quoted string with invisible characters made visible: ' the', '\\n'."""
    escaped = (str(text).replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t"))
    escaped = "".join(ch if ch.isprintable() or ch == " " else f"\\x{ord(ch):02x}" for ch in escaped)
    return f"'{escaped}'"


def decode(ids, vocab) -> str:
    """Token ids as one visible string (the tokens' texts joined), or the ids without a vocabulary."""
    ids = [int(i) for i in ids]
    if vocab is None:
        return " ".join(f"<{i}>" for i in ids)
    return show_text("".join(token_texts(ids, vocab)))


def model_name(metadata: dict) -> str:
    """A short model label from the store's metadata: the recorded spec (hub id or folder name)."""
    model = (metadata or {}).get("model") or {}
    spec = str(model.get("spec") or model.get("path") or (metadata or {}).get("architecture") or "model")
    if "/" in spec and (spec.startswith(("/", ".", "~")) or spec.count("/") > 1):
        return Path(spec).name or spec
    return spec


def quantization(metadata: dict) -> str | None:
    """'Q4_1 GGUF' / 'Q4_K_M GGUF' for a store recorded from a quantized GGUF (read off its file name), else None."""
    model = (metadata or {}).get("model") or {}
    if not model.get("quantized_gguf"):
        return None
    match = re.search(r"(?i)(?:^|[.\-_])((?:i?q\d+(?:_[a-z0-9]+)*)|bf16|f16|f32)\.gguf$", str(model.get("gguf_file") or ""))
    return f"{match.group(1).upper()} GGUF" if match else "quantized GGUF"


def _number(value):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def headline_rows(results) -> list:
    """One row per recorded layer: dead %, frequency, detectors, detected n-grams, positional by type, suppression."""
    token, trigram = results.detected_ngrams.get(1), results.detected_ngrams.get(3)
    rows = []
    for layer in results.layers:
        dead = results.dead[layer]
        row = {"layer": layer, "dead_percent": dead.dead_percent, "dead_count": dead.dead_count,
               "mean_alive_frequency": _number(dead.mean_alive_frequency)}
        for k in results.orders:
            detectors = results.detectors[k].get(layer)
            row[f"detectors_k{k}"] = detectors.num_detectors if detectors is not None else None
        for name, detected in (("tokens", token), ("trigrams", trigram)):
            if detected is None:
                continue
            at = detected.layers.index(layer) if layer in detected.layers else None
            for field, column in (("set_size", "detected"), ("cumulative_size", "cumulative"),
                                  ("new_overall", "new_overall"), ("new_vs_previous", "new_vs_previous")):
                row[f"{column}_{name}"] = getattr(detected, field)[at] if at is not None else None
        positional = results.positional.get(layer)
        if positional is not None:
            row["positional"] = positional.num_positional
            row["positional_corrected"] = positional.num_positional_corrected
            for kind in TYPES:
                for strength in ("strong", "weak"):
                    row[f"{kind}_{strength}"] = positional.type_counts[kind][strength]
        suppression = results.suppression.get(layer)
        if results.suppression:
            row["fraction_suppressing"] = _number(suppression.fraction_suppressing) if suppression else None
            row["control_fraction_suppressing"] = (_number(suppression.control_fraction_suppressing)
                                                   if suppression else None)
        rows.append(row)
    return rows


def _suppression_columns(suppression, j, vocab) -> dict:
    """Detector j's suppression figures (all None when it was not scored)."""
    if suppression is None or j is None:
        return dict.fromkeys(("suppresses", "mean_score", "trigger_percentile", "top_promoted", "top_suppressed"))
    tops = {name: " ".join(decode([t], vocab) for t in getattr(suppression, name)[j][:TOP_TOKENS_SHOWN])
            for name in ("top_promoted", "top_suppressed")}
    return {"suppresses": bool(suppression.suppresses[j]), "mean_score": float(suppression.mean_score[j]),
            "trigger_percentile": float(suppression.trigger_percentile[j]), **tops}


def detector_rows(results, vocab=None) -> list:
    """One row per detector (every order and n-gram layer), with its n-grams decoded and, for k=1, suppression."""
    rows = []
    for k in results.orders:
        for layer, detectors in results.detectors[k].items():
            suppression = results.suppression.get(layer) if k == 1 else None
            position = ({n: i for i, n in enumerate(suppression.neurons.tolist())} if suppression is not None else {})
            for i, neuron in enumerate(detectors.neurons.tolist()):
                ids = detectors.ngram_ids(i)
                lo, hi = int(detectors.ngram_offsets[i]), int(detectors.ngram_offsets[i + 1])
                row = {"layer": layer, "k": k, "neuron": neuron, "coverage_size": int(detectors.coverage_size[i]),
                       "mass": int(detectors.mass[i]), "covered_share": float(detectors.covered_share[i]),
                       "num_ngrams": hi - lo, "ngrams": " | ".join(decode(g, vocab) for g in ids),
                       "ngram_ids": " | ".join(" ".join(str(t) for t in g) for g in ids),
                       "ngram_active": " ".join(str(int(c)) for c in detectors.ngram_active[lo:hi]),
                       "ngram_seen": " ".join(str(int(c)) for c in detectors.ngram_seen[lo:hi])}
                if k == 1 and results.suppression:
                    row.update(_suppression_columns(suppression, position.get(neuron), vocab))
                rows.append(row)
    return rows


def positional_rows(results) -> list:
    """One row per positional neuron: type, strength, I, the null's quantile and p-value, on-ranges."""
    rows = []
    for layer, positional in results.positional.items():
        for i, neuron in enumerate(positional.neurons.tolist()):
            ranges = positional.on_ranges.get(neuron, [])
            rows.append({"layer": layer, "neuron": neuron, "type": positional.types[i],
                         "strength": positional.strengths[i], "mi": float(positional.mi[neuron]),
                         "corrected": bool(positional.corrected[i]),
                         "mi_null_q": _number(float(positional.mi_null_q[neuron])),
                         "mi_pvalue": _number(float(positional.mi_pvalue[neuron])),
                         "frequency": float(positional.frequency[neuron]),
                         "on_ranges": " ".join(f"{a}-{b}" for a, b in ranges)})
    return rows


def coverage_rows(results) -> list:
    """One row per (k, layer, coverage bin): how many neurons (and which share) fall in the bin, and how
    many more are at least in it (bounded n-gram mode: bin not certain)."""
    rows = []
    for k, per_layer in results.coverage.items():
        for layer, coverage in per_layer.items():
            histogram = coverage.histogram
            columns = zip(histogram.labels, histogram.counts.tolist(), histogram.fractions.tolist(),
                          histogram.uncertain.tolist())
            for label, count, fraction, at_least in columns:
                rows.append({"k": k, "layer": layer, "bin": label, "neurons": count, "fraction": fraction,
                             "uncertain_at_least": at_least})
    return rows


def domain_rows(results) -> list:
    """One row per (layer, domain): counted tokens, dead share, mean alive frequency, neurons alive only there."""
    rows = []
    for layer, breakdown in results.domains.items():
        for d, label in enumerate(breakdown.domains):
            rows.append({"layer": layer, "domain": label, "tokens": breakdown.tokens[d],
                         "dead_count": breakdown.dead_count[d], "dead_percent": breakdown.dead_percent[d],
                         "mean_alive_frequency": _number(breakdown.mean_alive_frequency[d]),
                         "alive_only_here": breakdown.alive_only_here[d]})
    return rows


def write_csv(rows: list, path, columns=None) -> Path:
    """Write dict rows as CSV (columns: the union of the rows' keys in first-seen order; None -> empty cell)."""
    path = Path(path)
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if _number(row.get(key)) is None else row[key] for key in columns})
    return path


def results_document(results, source: dict, per_neuron: bool = False) -> dict:
    """The results.json content: `source` (counts file, definition, threshold, ...) then `to_dict()`."""
    return {"source": source, **results.to_dict(per_neuron=per_neuron)}


def write_results_json(results, path, source: dict, per_neuron: bool = False) -> Path:
    """Write results.json (strict JSON: NaN is null); per-neuron arrays only with per_neuron=True."""
    path = Path(path)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(results_document(results, source, per_neuron), handle, allow_nan=False, indent=1)
        handle.write("\n")
    return path


def write_tables(results, folder, vocab=None, detectors=None) -> list:
    """Write layers.csv, detectors.csv, positional.csv, coverage.csv and domains.csv (those with rows).

    `detectors`: the rows of `detector_rows(results, vocab)` when the caller already has them."""
    folder = Path(folder)
    detectors = detector_rows(results, vocab) if detectors is None else detectors
    tables = {"layers": headline_rows(results), "detectors": detectors,
              "positional": positional_rows(results), "coverage": coverage_rows(results),
              "domains": domain_rows(results)}
    return [write_csv(rows, folder / f"{name}.csv") for name, rows in tables.items() if rows or name == "layers"]
