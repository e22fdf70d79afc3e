"""`fastneurons analyze`: counts store(s) -> results.json, CSV tables, figures and one HTML report.

For each store: open it (no model needed), load the model's fc2 / lm_head weights for suppression when
asked (`--weights lazy` reads only those from safetensors; a model that cannot be loaded only skips
suppression, with a warning), run `analyze_counts`,
prepare the few arrays the figures need from the counts and weights (fr(p) curves, example projections),
then write everything. Several stores get one sub-folder each plus cross-model figures and a combined report.
"""
from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np

from fastneurons.analysis.pipeline import AnalysisSettings, analyze_counts
from fastneurons.progress import bars
from fastneurons.analysis.positional import TYPES
from fastneurons.analysis.suppression import vocab_projection
from fastneurons.config import AnalyzeConfig
from fastneurons.reporting.figures import PositionalCurve, ProjectionExample, build_cross_figures, build_figures
from fastneurons.reporting.neuron_browser import browser_data
from fastneurons.reporting.outputs import (decode, detector_rows, model_name, positional_rows, quantization,
                                           write_results_json, write_tables)
from fastneurons.reporting.html_report import ModelSection, ReportFigure, write_report
from fastneurons.store import open_counts

CURVES_PER_TYPE = 3  # Fig. 7: example neurons per positional type
PROJECTION_EXAMPLES = 4  # Fig. 5: example token detectors


def _model_candidates(config: AnalyzeConfig, metadata: dict) -> list:
    if config.model:
        return [str(config.model)]
    recorded = (metadata or {}).get("model") or {}
    return list(dict.fromkeys(str(s) for s in (recorded.get("spec"), recorded.get("path")) if s))


def load_weights(counts, config: AnalyzeConfig, log=print):
    """(ModelWeights, the spec loaded, None) for suppression, or (None, None, why not) without raising.

    `config.weights` chooses as `record --weights` does: lazy reads only the down projections (with the
    tensors their directions need) and the unembedding from safetensors; eager loads the whole checkpoint.
    """
    from fastneurons.models import architectures as archs
    from fastneurons.models.lazy import suppression_weights, wants_lazy
    from fastneurons.models.loading import load_model

    candidates = _model_candidates(config, counts.metadata)
    if not candidates:
        return None, None, "no model recorded in the store; pass --model to compute suppression"
    errors = []
    for spec in candidates:
        try:
            if wants_lazy(config.weights, spec):
                weights = suppression_weights(spec, log=log)
            else:
                loaded = load_model(spec, dtype="auto")
                weights = archs.ModelWeights(loaded.model, loaded.arch)
        except Exception as error:  # any loading problem only skips suppression
            errors.append(str(error) if spec in str(error) else f"{spec}: {error}")
            continue
        neurons = archs.num_neurons(weights.model.config, weights.arch)
        layers = weights.num_layers
        if neurons != counts.num_neurons or (counts.ngram_layers and max(counts.ngram_layers) >= layers):
            errors.append(f"{spec}: {layers} layers of {neurons} neurons do not match the store "
                          f"({counts.num_neurons} neurons, n-gram layers {counts.ngram_layers})")
            continue
        return weights, spec, None
    return None, None, "the model could not be loaded, so suppression was skipped (" + "; ".join(errors) + ")"


def choose_positional_examples(results, per_type: int = CURVES_PER_TYPE) -> list:
    """(layer, neuron, type, strength, I) of the `per_type` positional neurons with the largest I per type,
    strong ones first."""
    chosen = []
    for kind in TYPES:
        candidates = [(strength != "strong", -float(p.mi[n]), layer, int(n), strength)
                      for layer, p in results.positional.items()
                      for n, t, strength in zip(p.neurons.tolist(), p.types, p.strengths) if t == kind]
        for _, minus_mi, layer, neuron, strength in sorted(candidates)[:per_type]:
            chosen.append((layer, neuron, kind, strength, -minus_mi))
    return chosen


def positional_curves(results, counts, per_type: int = CURVES_PER_TYPE) -> list:
    """fr(p) curves of the example positional neurons (Fig. 7), read from the counts one layer at a time."""
    chosen = choose_positional_examples(results, per_type)
    if not chosen:
        return []
    seen = np.asarray(counts.pos_seen, dtype=np.float64)
    curves = []
    for layer in sorted({c[0] for c in chosen}):
        pos_active = np.asarray(counts.pos_active(layer))
        for _, neuron, kind, strength, mi in (c for c in chosen if c[0] == layer):
            with np.errstate(invalid="ignore", divide="ignore"):
                fr = np.where(seen > 0, pos_active[:, neuron] / seen, np.nan)
            curves.append(PositionalCurve(layer, neuron, kind, strength, mi, fr))
    order = {(c[0], c[1]): i for i, c in enumerate(chosen)}
    return sorted(curves, key=lambda c: order[(c.layer, c.neuron)])


def projection_examples(results, weights, vocab, count: int = PROJECTION_EXAMPLES) -> list:
    """Fig. 5 inputs: the token detectors with the most activations, with s = E v on their top tokens."""
    candidates = []
    for layer, sup in results.suppression.items():
        detectors = results.detectors[1][layer]
        mass = dict(zip(detectors.neurons.tolist(), detectors.mass.tolist()))
        candidates += [(-mass[n], layer, j) for j, n in enumerate(sup.neurons.tolist())]
    if not candidates:
        return []
    unembedding = weights.unembedding()
    center = bool((results.settings or {}).get("center", False))
    examples = []
    for _, layer, j in sorted(candidates)[:count]:
        sup = results.suppression[layer]
        neuron = int(sup.neurons[j])
        s = vocab_projection(weights.update_directions(layer, [neuron]), unembedding, center)[0]
        triggers = set(int(t) for t in sup.triggers[j])
        side = lambda ids: [(decode([t], vocab), float(s[t]), int(t) in triggers) for t in ids.tolist()]  # noqa: E731
        examples.append(ProjectionExample(
            layer=layer, neuron=neuron, triggers=[decode([t], vocab) for t in sorted(triggers)],
            trigger_score=float(sup.mean_score[j]), trigger_percentile=float(sup.trigger_percentile[j]),
            suppresses=bool(sup.suppresses[j]), promoted=side(sup.top_promoted[j]),
            suppressed=side(sup.top_suppressed[j])))
    return examples


def save_figures(items, folder: Path, formats, log) -> list:
    """Save each FigureItem as folder/<name>.<format>; return ReportFigures (PNG bytes) for the report."""
    folder.mkdir(parents=True, exist_ok=True)
    rendered = []
    for item in items:
        buffer = io.BytesIO()
        item.figure.savefig(buffer, format="png")
        png = buffer.getvalue()
        for fmt in formats:
            path = folder / f"{item.name}.{fmt}"
            if fmt == "png":
                path.write_bytes(png)
            else:
                item.figure.savefig(path, format=fmt)
            log(f"wrote {path}")
        rendered.append(ReportFigure(item.name, item.title, item.caption, png))
        item.figure.clear()
    return rendered


def analyze_store(path, folder, config: AnalyzeConfig, log=print, anchor: str = "model") -> ModelSection:
    """Analyse one counts store and write its results.json, CSV tables and figures into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    notes = []
    with open_counts(path) as counts:
        metadata, vocab = counts.metadata, counts.vocab
        weights, loaded_spec, why_not = None, None, "suppression not asked for (--no-suppression)"
        if config.suppression:
            weights, loaded_spec, why_not = load_weights(counts, config, log)
            if weights is None:
                log(f"warning: {path}: {why_not}")
        results = analyze_counts(counts, config.settings or AnalysisSettings(), weights,
                                 progress=bars(config.progress, unit="layer"))
        if weights is None:
            results = replace(results, suppression_skipped=why_not)
            if config.suppression:
                notes.append(why_not)
        if not counts.complete:
            notes.append(f"{path} is a partial recording ({counts.units_held} units held): the numbers cover only "
                         "what was committed so far")
        source = {"counts": str(path), "model": model_name(metadata), "neuron_definition": results.neuron_definition,
                  "threshold": results.threshold, "complete": bool(counts.complete), "units_held": counts.units_held,
                  "domains": list(counts.domains), "domain_tokens": np.asarray(counts.domain_tokens).tolist(),
                  "suppression_model": loaded_spec}
        curves = positional_curves(results, counts) if results.positional else []
        examples = projection_examples(results, weights, vocab) if weights is not None and results.suppression else []
        detectors = detector_rows(results, vocab)  # for detectors.csv, the report and its browser alike
        browser = browser_data(results, counts, detectors, positional_rows(results))

    written = [write_results_json(results, folder / "results.json", source, per_neuron=config.per_neuron)]
    written += write_tables(results, folder, vocab, detectors)
    for file in written:
        log(f"wrote {file}")
    items, skipped = build_figures(results, examples, curves)
    figures = save_figures(items, folder / "figures", config.formats, log)
    files = [f.name for f in written] + [f"figures/{f.name}.{fmt}" for f in figures for fmt in config.formats]
    return ModelSection(results=results, source=source, figures=figures, skipped=skipped, notes=notes,
                        vocab=vocab, files=files, anchor=anchor, detectors=detectors, browser=browser)


def _folder_names(paths) -> list:
    names = []
    for path in paths:
        name, index = path.stem, 2
        while name in names:
            name, index = f"{path.stem}-{index}", index + 1
        names.append(name)
    return names


def analyze_and_report(path, folder, config: AnalyzeConfig, log=print, anchor: str = "model") -> ModelSection:
    """One store: results.json, tables, figures and its own report.html in `folder`; returns the section."""
    section = analyze_store(path, folder, config, log, anchor=anchor)
    log(f"wrote {write_report(Path(folder) / 'report.html', [section])}")
    return section


def analyze(config: AnalyzeConfig, log=print) -> Path:
    """Run `fastneurons analyze`; returns the path of the (combined) report.html. `log` gets one line per file."""
    config.validate()
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: analyze writes a report folder (results.json, figures, report.html)")
    paths = [Path(p) for p in config.counts]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"no such counts file: {', '.join(missing)}")
    if len(paths) == 1:
        analyze_and_report(paths[0], out, config, log)
        return out / "report.html"
    names = _folder_names(paths)
    sections = []
    for path, name in zip(paths, names):
        section = analyze_and_report(path, out / name, config, log, anchor=name)
        section.files = [f"{name}/{f}" for f in section.files + ["report.html"]]
        sections.append(section)
    labels = [s.source["model"] + (f" ({quantization(s.results.metadata)})" if quantization(s.results.metadata) else "")
              for s in sections]   # quantized checkpoints say so in every legend
    if len(set(labels)) < len(labels):
        labels = [f"{label} ({name})" for label, name in zip(labels, names)]
    for section, label in zip(sections, labels):
        section.source["model"] = label
    size = [s.results.num_neurons * len(s.results.layers) for s in sections]
    order = sorted(range(len(sections)), key=size.__getitem__)  # smallest model first in the legends
    cross = save_figures(build_cross_figures([sections[i].results for i in order], [labels[i] for i in order]),
                         out / "figures", config.formats, log)
    definitions = {s.results.neuron_definition for s in sections}
    notes = [] if len(definitions) == 1 else [
        "The stores use different neuron definitions or thresholds; compare their lines with care."]
    report = write_report(out / "report.html", sections, cross, notes)
    log(f"wrote {report}")
    return report
