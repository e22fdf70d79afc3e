"""The single-file HTML report of `fastneurons analyze`: header, headline table, captioned figures, detector and
positional-neuron lists, a neuron browser (reporting/neuron_browser.py), and the paper's OPT figures beside ours.
Self-contained (PNG figures embedded as base64, inline CSS, inline JSON and script, no external resources);
every text from the data is HTML-escaped.
"""
from __future__ import annotations

import base64
import html
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastneurons.reporting import paper
from fastneurons.analysis.positional import TYPES
from fastneurons.reporting.neuron_browser import STYLE as BROWSER_STYLE, browser_html
from fastneurons.reporting.outputs import detector_rows, headline_rows, model_name, positional_rows

MAX_ROWS = 400  # rows shown per list in the report; the CSV files hold all of them
MAX_NGRAMS = 12  # n-grams shown per detector in the report
OPEN_ROWS = 60  # lists up to this long are shown unfolded
VERDICT = {True: "✓ agrees", False: "✗ differs", None: ""}  # None: the paper states no threshold to test


@dataclass
class ReportFigure:
    """A rendered figure for the report: file stem, title, caption and the PNG bytes to embed."""

    name: str
    title: str
    caption: str
    png: bytes


@dataclass
class ModelSection:
    """Everything the report shows about one counts store."""

    results: object  # AnalysisResults
    source: dict  # counts file, completeness, model, suppression model: written as results.json's `source`
    figures: list = field(default_factory=list)  # [ReportFigure]
    skipped: dict = field(default_factory=dict)  # {figure: why it was not drawn}
    notes: list = field(default_factory=list)  # warnings shown at the top of the section
    vocab: list | None = None
    files: list = field(default_factory=list)  # output files, relative to the report's folder
    anchor: str = "model"
    detectors: list | None = None  # detector_rows(results, vocab), when already built for detectors.csv
    browser: dict | None = None  # neuron_browser.browser_data(...): the neuron browser's cards and summaries


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value, kind: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if kind == "pct":
        return f"{value:.1f}%"
    if kind == "share":
        return f"{100 * value:.0f}%"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _table(headers, rows, numeric=()) -> str:
    """An HTML table (no header row when `headers` is None); cells are escaped here (pass plain text)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers or [])
    body = []
    for row in rows:
        cells = "".join(f"<td class=\"{'num' if i in numeric else ''}\">{_e(cell)}</td>" for i, cell in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table>{thead}<tbody>{''.join(body)}</tbody></table>"


def figure_html(figure: ReportFigure) -> str:
    """A <figure> with the PNG embedded as base64 and its caption."""
    data = base64.b64encode(figure.png).decode("ascii")
    return (f'<figure id="{_e(figure.name)}"><img alt="{_e(figure.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption><b>{_e(figure.title)}.</b> {_e(figure.caption)}</figcaption></figure>")


def _header(section: ModelSection) -> str:
    r, source = section.results, section.source
    meta = r.metadata or {}
    domains = ", ".join(f"{label} ({_fmt(tokens)} tokens)" for label, tokens in
                        zip(source.get("domains", []), source.get("domain_tokens", [])))
    rows = [
        ("model", source.get("model") or model_name(meta)),
        ("architecture", meta.get("architecture", "–")),
        ("counts file", source.get("counts", "–")),
        ("store", "complete" if source.get("complete", True) else "partial recording (not finished)"),
        ("counted tokens", _fmt(r.tokens) + (" (BOS included)" if meta.get("count_bos") else " (BOS excluded)")),
        ("neuron definition (active)", r.neuron_definition or "–"),
        ("threshold", _fmt(r.threshold)),
        ("layers", f"{len(r.layers)} recorded ({_span(r.layers)}); {r.num_neurons:,} neurons each"),
        ("n-gram layers / orders", f"{_span(r.ngram_layers) or 'none'} / k = {', '.join(map(str, r.orders)) or '–'}"),
        ("positions", f"{meta.get('max_positions', '–')} (full-length data: {_fmt(meta.get('full_length'))})"),
        ("domains", domains or "–"),
        ("suppression weights", source.get("suppression_model") or "not loaded"),
    ]
    return _table(None, rows)


def _span(layers) -> str:
    layers = list(layers)
    if not layers:
        return ""
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}–{layers[-1]}" if len(layers) > 1 else str(layers[0])
    return ", ".join(map(str, layers))


def _paper_block(results) -> str:
    size = paper.opt_size(results.metadata)
    definition = _e(results.neuron_definition or f"pre-activation > {results.threshold}")
    if size is None:
        return (f"<p>This model is not one of the OPT checkpoints the paper studies (125m … 66b), so there are no "
                f"paper numbers to set beside ours. Here a neuron is <i>active</i> when: <code>{definition}</code> "
                f"(threshold {_e(_fmt(results.threshold))}). The paper's numbers are for OPT, whose ReLU neurons are "
                "active iff fc1(x) &gt; 0.</p>")
    rows = [(c.figure, c.statement, c.ours, VERDICT[c.agrees])
            for c in paper.compare(results, size)]
    note = (f"<p>This store is <b>OPT-{_e(size)}</b> (inferred from hidden size and layer count). Paper statements "
            f"for this size (SPEC §5) beside ours. The paper used over 20M tokens for dead neurons and over 5M for "
            f"the rest; this analysis counted {_e(_fmt(results.tokens))} tokens, so rare activations may be missed "
            "here (a neuron looks dead until it fires once).</p>")
    if not rows:
        return note + "<p>SPEC §5 states no number for this size.</p>"
    return note + _table(["paper", f"OPT-{size} in the paper", "ours", ""], rows)


def _positional_summary(row) -> str:
    parts = [f"{kind.replace('_', ' ')} {row.get(kind + '_strong', 0)}/{row.get(kind + '_weak', 0)}"
             for kind in TYPES if row.get(kind + "_strong") or row.get(kind + "_weak")]
    return ", ".join(parts) or "–"


def _headline(results) -> str:
    rows = headline_rows(results)
    orders = results.orders
    headers = ["layer", "dead", "mean alive freq"] + [f"detectors k={k}" for k in orders]
    if 1 in results.detected_ngrams:
        headers += ["detected tokens", "cumulative", "new overall", "new vs prev."]
    if results.positional:
        headers += ["positional (plug-in / corrected)", "by type (strong/weak)"]
    if results.suppression:
        headers += ["suppressing (control)"]
    table_rows = []
    for row in rows:
        cells = [row["layer"], _fmt(row["dead_percent"], "pct"), _fmt(row["mean_alive_frequency"])]
        cells += [_fmt(row.get(f"detectors_k{k}")) for k in orders]
        if 1 in results.detected_ngrams:
            cells += [_fmt(row.get(name)) for name in ("detected_tokens", "cumulative_tokens",
                                                       "new_overall_tokens", "new_vs_previous_tokens")]
        if results.positional:
            cells += [f"{_fmt(row.get('positional'))} / {_fmt(row.get('positional_corrected'))}",
                      _positional_summary(row)]
        if results.suppression:
            fraction = row.get("fraction_suppressing")
            cells.append("–" if fraction is None else
                         f"{_fmt(fraction, 'share')} ({_fmt(row.get('control_fraction_suppressing'), 'share')})")
        table_rows.append(cells)
    text_columns = {headers.index("by type (strong/weak)")} if results.positional else set()
    return _table(headers, table_rows, numeric=set(range(len(headers))) - text_columns)


def _certificates(results) -> str:
    """Per layer and order, how many neurons' C_k(n) and bins are exact (bounded n-gram mode)."""
    table = (results.summary or {}).get("ngram_certified") or {}
    rows = [(row["layer"], k, row["neurons_with_mass"], row["certified"], row["bin_certified"],
             row["uncertain_candidates"]) for k, per_layer in table.items() for row in per_layer]
    if not rows:
        return ""
    if all(r[2] == r[3] and r[5] == 0 for r in rows):
        return "<p class=\"note\">Every neuron's coverage C_k(n) and detector status is exact.</p>"
    headers = ["layer", "k", "neurons with mass", "C_k(n) certified", "bin certified", "uncertain candidates"]
    more = (" A larger <code>--summary-capacity</code> certifies more (<code>--unigram-capacity</code> for the "
            "token summaries alone: the vocabulary bounds them)." if any(r[4] < r[2] for r in rows) else "")
    return ("<p class=\"note\">Bounded n-gram state: coverage bins of uncertified neurons are reported as "
            f"'at least' bins, uncertain candidates are neither listed nor counted as detectors.{more}</p>"
            + _table(headers, rows, numeric=set(range(len(headers)))))


def _limited(rows, what: str, csv_name: str) -> tuple:
    note = (f"<p class=\"note\">Showing the first {MAX_ROWS} of {len(rows):,} {what}; all are in "
            f"<code>{csv_name}</code>.</p>" if len(rows) > MAX_ROWS else "")
    return rows[:MAX_ROWS], note


def _ngram_cell(text: str) -> str:
    parts = text.split(" | ") if text else []
    shown = " ".join(parts[:MAX_NGRAMS])
    return shown + (f" … (+{len(parts) - MAX_NGRAMS} more)" if len(parts) > MAX_NGRAMS else "")


def _detector_lists(section: ModelSection) -> str:
    results = section.results
    all_rows = section.detectors if section.detectors is not None else detector_rows(results, section.vocab)
    out = []
    for k in results.orders:
        rows = [row for row in all_rows if row["k"] == k]
        layers = len({row["layer"] for row in rows})
        name = {1: "Token detectors (k=1)", 2: "Bigram detectors (k=2)", 3: "Trigram detectors (k=3)"}.get(k, f"k={k}")
        shown, note = _limited(rows, "detectors", "detectors.csv")
        headers = ["layer", "neuron", "detected n-grams", "C_k", "activations", "covered"]
        suppression = k == 1 and bool(results.suppression)
        if suppression:
            headers += ["suppresses", "mean s", "percentile", "top promoted", "top suppressed"]
        table_rows = []
        for row in shown:
            cells = [row["layer"], row["neuron"], _ngram_cell(row["ngrams"]), row["coverage_size"],
                     _fmt(row["mass"]), _fmt(row["covered_share"], "share")]
            if suppression:
                percentile = row.get("trigger_percentile")
                cells += [_fmt(row.get("suppresses")), _fmt(row.get("mean_score")),
                          "–" if percentile is None else f"{percentile:.2f}", row.get("top_promoted") or "–",
                          row.get("top_suppressed") or "–"]
            table_rows.append(cells)
        body = _table(headers, table_rows, numeric={0, 1, 3, 4, 5}) if rows else "<p>None found.</p>"
        out.append(f"<details{_open(rows)}><summary>{_e(name)}: {len(rows):,} in {layers} layer(s)</summary>"
                   f"{note}{body}</details>")
    return "".join(out)


def _positional_list(section: ModelSection) -> str:
    rows = positional_rows(section.results)
    shown, note = _limited(rows, "positional neurons", "positional.csv")
    headers = ["layer", "neuron", "type", "strength", "I", "beats null", "p-value", "mean fr", "on-ranges"]
    table_rows = [[r["layer"], r["neuron"], r["type"].replace("_", " "), r["strength"], _fmt(r["mi"]),
                   _fmt(r["corrected"]), _fmt(r["mi_pvalue"]), _fmt(r["frequency"]), r["on_ranges"] or "–"]
                  for r in shown]
    body = _table(headers, table_rows, numeric={0, 1, 4, 6, 7}) if rows else "<p>None found.</p>"
    return f"<details{_open(rows)}><summary>Positional neurons: {len(rows):,}</summary>{note}{body}</details>"


def _open(rows) -> str:
    return " open" if 0 < len(rows) <= OPEN_ROWS else ""


def _setting(name, value) -> str:
    if name == "log_base" and isinstance(value, float) and math.isclose(value, math.e):
        return "e (natural log)"
    if name == "control_size" and value is None:
        return "as many as token detectors"
    if isinstance(value, dict):
        return ", ".join(f"k={k}: {v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return _fmt(value)


def _files(files) -> str:
    data = [f for f in files if "/figures/" not in f"/{f}"]
    figures = {}
    for f in files:
        if f not in data:
            stem, _, fmt = f.rpartition(".")
            figures.setdefault(stem, []).append((fmt, f))
    links = [f'<a href="{_e(f)}">{_e(f)}</a>' for f in data]
    for stem, pairs in figures.items():
        formats = ", ".join(f'<a href="{_e(f)}">{_e(fmt)}</a>' for fmt, f in pairs)
        links.append(f"{_e(stem.rpartition('/')[2])} ({formats})")
    return "<p class=\"note\">Files: " + " · ".join(links) + "</p>"


def _overview(sections) -> str:
    """One row per store: definition, tokens, size, and the headline totals."""
    rows = []
    for s in sections:
        r = s.results
        dead = sum(d.dead_count for d in r.dead.values()) / max(1, r.num_neurons * len(r.layers))
        detected = r.detected_ngrams.get(1)
        overall = r.suppression_overall
        rows.append((s.source.get("model") or model_name(r.metadata), r.neuron_definition or "–", _fmt(r.tokens),
                     f"{len(r.layers)} × {r.num_neurons:,}", _fmt(100 * dead, "pct"),
                     _fmt(sum(detected.num_detectors)) if detected else "–",
                     _fmt(sum(p.num_positional for p in r.positional.values())) if r.positional else "–",
                     _fmt(overall.fraction_suppressing, "share") if overall and overall.num_detectors else "–"))
    headers = ["model", "active", "tokens", "layers × neurons", "dead", "token detectors", "positional",
               "suppressing"]
    return _table(headers, rows, numeric={2, 4, 5, 6, 7})


def model_section_html(section: ModelSection, level: int = 2) -> str:
    """The report body for one store (headings start at `level`)."""
    r = section.results
    h, h2 = f"h{level}", f"h{level + 1}"
    parts = [f'<section id="{_e(section.anchor)}"><{h}>{_e(section.source.get("model") or model_name(r.metadata))}'
             f"</{h}>", _header(section)]
    notes = list(section.notes)
    for reason in (r.suppression_skipped, r.positional_skipped):
        if reason and not any(reason in note for note in notes):
            notes.append(reason)
    if notes:
        parts.append("<ul class=\"warn\">" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    parts += [f"<{h2}>Against the paper</{h2}>", _paper_block(r), f"<{h2}>Per layer</{h2}>", _headline(r), _certificates(r)]
    if section.figures or section.skipped:
        parts.append(f"<{h2}>Figures</{h2}>")
    parts += [figure_html(figure) for figure in section.figures]
    if section.skipped:
        parts.append("<p class=\"note\">Not drawn: " + "; ".join(f"{_e(name)} ({_e(why)})"
                                                              for name, why in section.skipped.items()) + ".</p>")
    parts += [f"<{h2}>Detectors</{h2}>", _detector_lists(section) or "<p>No n-gram tables in this store.</p>",
              f"<{h2}>Positional neurons</{h2}>",
              _positional_list(section) if r.positional else f"<p>{_e(r.positional_skipped or 'none')}</p>",
              *([f"<{h2}>Neuron browser</{h2}>", browser_html(section.browser, section.anchor)]
                if section.browser is not None else []),
              f"<{h2}>Settings</{h2}>",
              _table(["parameter", "value"], [(k, _setting(k, v)) for k, v in (r.settings or {}).items()])]
    if section.files:
        parts.append(_files(section.files))
    parts.append("</section>")
    return "".join(parts)


STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:0;background:#f6f7f9;
color:#222}
main{max-width:1180px;margin:0 auto;padding:24px 32px;background:#fff}
h1{font-size:1.6em;margin:0 0 4px}h2{border-bottom:2px solid #e3e6ea;padding-bottom:4px;margin-top:36px}
h3{margin-top:28px;color:#333}
table{border-collapse:collapse;font-size:13px;margin:8px 0 12px;max-width:100%}
th,td{border:1px solid #e1e4e8;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}tr:nth-child(even) td{background:#fafbfc}
td.num{text-align:right;white-space:nowrap}
td{overflow-wrap:anywhere;max-width:420px}
figure{margin:18px 0 26px}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:13px;color:#444;max-width:1000px;margin-top:4px}
details{margin:8px 0}summary{cursor:pointer;font-weight:600}
.note{color:#555;font-size:13px}.warn{background:#fff6e0;border:1px solid #f0d48a;padding:8px 8px 8px 28px}
code{background:#f2f3f5;padding:0 3px;border-radius:3px}.sub{color:#666;margin:0 0 16px}
nav a{margin-right:14px}
"""


def _page(title: str, subtitle: str, body: str) -> str:
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<style>{STYLE}{BROWSER_STYLE}</style></head><body><main><h1>{_e(title)}</h1><p class=\"sub\">{_e(subtitle)}</p>"
            f"{body}</main></body></html>\n")


def _subtitle() -> str:
    from fastneurons import __version__

    return (f"fastneurons {__version__} · {time.strftime('%Y-%m-%d %H:%M')} · statistics as defined in SPEC §3 "
            f"after {paper.PAPER}")


def write_report(path, sections, cross_figures=(), cross_notes=()) -> Path:
    """Write one self-contained HTML report for one or more stores; several also get the cross-model figures."""
    sections = list(sections)
    if not sections:
        raise ValueError("write_report needs at least one ModelSection")
    path = Path(path)
    if len(sections) == 1 and not cross_figures:
        section = sections[0]
        title = f"fastneurons report — {section.source.get('model') or model_name(section.results.metadata)}"
        body = model_section_html(section, level=2)
    else:
        title = f"fastneurons report — {len(sections)} models"
        nav = "<nav>" + "".join(f'<a href="#{_e(s.anchor)}">{_e(s.source.get("model") or s.anchor)}</a>'
                                for s in sections) + "</nav>"
        parts = [nav, "<h2>Across models</h2>", _overview(sections)]
        parts += [f"<p class=\"note\">{_e(note)}</p>" for note in cross_notes]
        trend = paper.compare_sizes([s.results for s in sections])
        if trend is not None:
            parts.append(_table(["paper", "OPT sizes", "statement", "ours", ""],
                                [(trend.figure, trend.size, trend.statement, trend.ours, VERDICT[trend.agrees])]))
        parts += [figure_html(figure) for figure in cross_figures]
        parts += [model_section_html(section, level=2) for section in sections]
        body = "".join(parts)
    path.write_text(_page(title, _subtitle(), body), encoding="utf-8")
    return path
