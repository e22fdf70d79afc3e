"""The written outputs: results.json and CSV tables (fastneurons.reporting.outputs), the paper's OPT figures
(fastneurons.reporting.paper) and the single-file HTML report (fastneurons.reporting.html_report)."""
import csv
import io
import json
import re
from dataclasses import replace

import pytest
import test_figures
from test_figures import SETTINGS, VOCAB, FakeWeights

from fastneurons.reporting import paper

from fastneurons.reporting import html_report as report
from fastneurons.reporting.analyze import positional_curves, projection_examples
from fastneurons.reporting.figures import build_figures
from fastneurons.reporting.outputs import decode, headline_rows, show_text, write_results_json, write_tables
from fastneurons.reporting.html_report import ModelSection, ReportFigure, write_report


counts, results = test_figures.counts, test_figures.results  # the figure tests' fixtures, shared


@pytest.fixture(scope="module")
def rendered(results, counts):
    items, skipped = build_figures(results, projection_examples(results, FakeWeights(), VOCAB),
                                   positional_curves(results, counts))
    pngs = []
    for item in items:
        buffer = io.BytesIO()
        item.figure.savefig(buffer, format="png", dpi=40)
        pngs.append(ReportFigure(item.name, item.title, item.caption, buffer.getvalue()))
    return pngs, skipped


def opt_metadata(metadata, hidden, layers):
    config = dict(metadata.get("model_config") or {}, hidden_size=hidden, num_hidden_layers=layers, ffn_dim=4 * hidden)
    return dict(metadata, architecture="opt", model_config=config)


def test_show_text_makes_tokens_visible():
    assert show_text(" the") == "' the'" and show_text("\n") == "'\\n'" and show_text("a\tb\\") == "'a\\tb\\\\'"
    assert show_text("\x00") == "'\\x00'"
    assert decode([5, 6], VOCAB) == "'<script>x</script>\\n'" and decode([1, 2], None) == "<1> <2>"


def test_results_json_is_strict_json_with_source(results, tmp_path):
    source = {"counts": "x.h5", "neuron_definition": results.neuron_definition, "threshold": 0.0}
    path = write_results_json(results, tmp_path / "results.json", source)
    document = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"non-JSON constant {name}"))
    assert document["source"] == source and document["format"] == "fastneurons.analysis/1"
    assert "mi" not in document["positional"]["0"]
    full = json.loads(write_results_json(results, tmp_path / "full.json", source, per_neuron=True).read_text())
    assert len(full["positional"]["0"]["mi"]) == results.num_neurons


def test_csv_tables_read_back(results, tmp_path):
    paths = {path.stem: path for path in write_tables(results, tmp_path, VOCAB)}
    assert set(paths) == {"layers", "detectors", "positional", "coverage", "domains"}
    read = {name: list(csv.DictReader(open(path, newline="", encoding="utf-8"))) for name, path in paths.items()}
    layers = read["layers"]
    assert [int(row["layer"]) for row in layers] == results.layers
    assert float(layers[0]["dead_percent"]) == results.dead[0].dead_percent
    assert layers[2]["detectors_k1"] == ""  # layer 2 has no n-gram tables: an empty cell, not 0
    assert int(layers[0]["oscillatory_strong"]) == results.positional[0].type_counts["oscillatory"]["strong"]
    detector = next(row for row in read["detectors"] if (row["k"], row["layer"], row["neuron"]) == ("1", "0", "1"))
    assert detector["ngrams"] == "'w4' | '<script>x</script>'" and detector["ngram_ids"] == "4 | 5"
    assert detector["suppresses"] == "False"
    assert set(detector["top_promoted"].split(" ")[:2]) == {"'w4'", "'<script>x</script>'"}  # s = 1 on both
    positional = {(row["layer"], row["neuron"]): row for row in read["positional"]}
    assert positional["0", "2"]["type"] == "oscillatory" and positional["0", "2"]["on_ranges"] == "0-15 32-47"
    assert len(read["coverage"]) == len(results.orders) * len(results.ngram_layers) * len(SETTINGS.bins)
    assert {row["domain"] for row in read["domains"]} == {"web", "code"}
    assert headline_rows(results)[0]["detected_tokens"] == results.detected_ngrams[1].set_size[0]


def test_report_embeds_every_figure_and_escapes_text(results, rendered, tmp_path):
    figures, skipped = rendered
    section = ModelSection(results, {"counts": "fake.h5", "model": "toy <b>model</b>"}, figures, skipped,
                           ["a note with <tags>"], VOCAB, ["results.json", "figures/fig1_dead_frequency.png"])
    html = write_report(tmp_path / "report.html", [section]).read_text(encoding="utf-8")
    assert html.count("<img ") == len(figures) == html.count("data:image/png;base64,")
    for figure in figures:
        assert f'id="{figure.name}"' in html and report._e(figure.caption) in html
    assert "<script" not in html and "&lt;script&gt;x&lt;/script&gt;" in html  # the token, escaped
    assert "toy &lt;b&gt;model&lt;/b&gt;" in html and "a note with &lt;tags&gt;" in html
    assert not re.search(r'(src|href)="(https?:)?//', html) and "<link" not in html  # self-contained
    assert "not one of the OPT checkpoints" in html and "fc1(x)[n] &gt; 0.0" in html  # says which definition
    assert html.count("<section") == 1 and "<nav>" not in html


def test_long_lists_are_cut_with_a_pointer_to_the_csv(results, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "MAX_ROWS", 1)
    html = write_report(tmp_path / "r.html", [ModelSection(results, {}, vocab=VOCAB)]).read_text()
    assert "Showing the first 1 of" in html and "detectors.csv" in html and "positional.csv" in html


def test_opt_sizes_are_inferred_from_the_config(results):
    meta = results.metadata
    assert paper.opt_size(opt_metadata(meta, 768, 12)) == "125m"
    assert paper.opt_size(opt_metadata(meta, 9216, 64)) == "66b"
    assert paper.opt_size(opt_metadata(meta, 1024, 24)) == "350m"
    assert paper.opt_size(meta) is None  # the fake 8-wide model
    assert paper.opt_size(dict(opt_metadata(meta, 768, 12), architecture="llama")) is None
    assert paper.opt_size({}) is None


def test_paper_findings_beside_ours(results, rendered, tmp_path):
    as66b = replace(results, metadata=opt_metadata(results.metadata, 9216, 64))
    rows = {c.statement: c for c in paper.compare(as66b)}
    assert rows["over 70% dead neurons in some layers"].agrees is False  # ours: 1 dead of 12 = 8.3%
    assert rows["over 10k detected tokens cumulatively"].agrees is False
    assert rows["5351 token detectors overall"].agrees is None  # no threshold stated, numbers shown only
    assert rows["over 80% of token detectors suppress their triggers"].ours.startswith("50% of")
    as125m = replace(results, metadata=opt_metadata(results.metadata, 768, 12))
    oscillatory = {c.figure: c for c in paper.compare(as125m)}["Fig. 9"]
    assert oscillatory.ours.startswith("1 strongly oscillatory neuron;") and "50% of positions" in oscillatory.ours
    html = write_report(tmp_path / "r.html", [ModelSection(as66b, {}, rendered[0][:1])]).read_text()
    assert "OPT-66b" in html and "5351 token detectors overall" in html and "✗ differs" in html


def test_combined_report_has_a_section_per_model_and_the_size_trend(results, rendered, tmp_path):
    small = replace(results, metadata=opt_metadata(results.metadata, 768, 12))
    dead = {layer: replace(d, dead_count=d.num_neurons // 2) for layer, d in results.dead.items()}
    large = replace(results, metadata=opt_metadata(results.metadata, 2048, 24), dead=dead)
    trend = paper.compare_sizes([large, small])
    assert trend.size == "125m < 1.3b" and trend.agrees is False  # more dead, but not rarer activation
    sections = [ModelSection(r, {"model": name}, rendered[0][:2], anchor=name) for r, name in
                ((small, "opt-125m"), (large, "opt-1.3b"))]
    html = write_report(tmp_path / "all.html", sections, rendered[0][:1], ["a cross note"]).read_text()
    assert html.count("<section") == 2 and 'href="#opt-125m"' in html and 'id="opt-1.3b"' in html
    assert html.count("<img ") == 5 and "a cross note" in html and paper.CROSS_SIZE in html
    with pytest.raises(ValueError, match="at least one"):
        write_report(tmp_path / "none.html", [])


def test_quantized_checkpoints_are_named_by_their_gguf_type():
    from fastneurons.reporting.outputs import quantization

    def meta(gguf_file, quantized=True):
        return {"model": {"quantized_gguf": quantized, "gguf_file": gguf_file}}

    assert quantization(meta("SmolLM2-135M-Instruct.Q4_1.gguf")) == "Q4_1 GGUF"
    assert quantization(meta("gemma-3-270m-q4_k_m.gguf")) == "Q4_K_M GGUF"
    assert quantization(meta("model.gguf")) == "quantized GGUF"
    assert quantization(meta(None, quantized=False)) is None and quantization({}) is None


def test_figure_titles_name_a_quantized_checkpoint():
    from types import SimpleNamespace

    from fastneurons.reporting.figures.style import model_label

    quantized = SimpleNamespace(metadata={"model": {"spec": "gemma3-270m", "quantized_gguf": True,
                                                    "gguf_file": "gemma-3-270m-q4_k_m.gguf"}})
    plain = SimpleNamespace(metadata={"model": {"spec": "facebook/opt-125m"}})
    assert model_label(quantized) == "gemma3-270m (Q4_K_M GGUF)" and model_label(plain) == "facebook/opt-125m"
