"""The report's neuron browser, on the planted OPT: its data, and the page itself in a real headless Chromium.

Chromium (Debian package `chromium`) loads report.html with `#neuron=L:N` in the address, which runs
the page's own search; `--dump-dom` returns the document after the script ran. Skipped without chromium.
"""
import html
import json
import re
import shutil
import subprocess

import pytest

from fastneurons.config import AnalyzeConfig
from fastneurons.analysis.pipeline import AnalysisSettings
from fastneurons.models.loading import gpt2_tokenizer
from fastneurons.reporting import neuron_browser
from fastneurons.reporting.analyze import analyze_and_report
from fastneurons.reporting.outputs import positional_rows, show_text
from fastneurons.store import open_counts
from planted_store import record_planted_store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """(report folder, ModelSection, PlantSpec) of the planted store analysed with suppression."""
    folder = tmp_path_factory.mktemp("browser")
    counts, _, spec = record_planted_store(folder)
    config = AnalyzeConfig(counts=[str(counts)], out=str(folder / "report"), formats=["png"],
                           settings=AnalysisSettings(null_samples=20))
    section = analyze_and_report(counts, folder / "report", config, log=lambda *a: None)
    return folder / "report", section, spec


def _page_data(path):
    blob = re.search(r'<script type="application/json" class="nb-data">(.*?)</script>', path.read_text(), re.S)
    return json.loads(blob.group(1))


def test_every_detector_and_positional_neuron_has_a_card(report):
    folder, section, spec = report
    data = _page_data(folder / "report.html")
    assert data == json.loads(json.dumps(section.browser))
    results = section.results
    expected = {f"{l}:{n}" for k in results.orders for l, d in results.detectors[k].items() for n in d.neurons.tolist()}
    expected |= {f"{l}:{n}" for l, p in results.positional.items() for n in p.neurons.tolist()}
    assert set(data["cards"]) == expected and {f"0:{n}" for n in spec.detectors} <= expected
    neuron, triggers = next(iter(spec.detectors.items()))
    token_card = next(d for d in data["cards"][f"0:{neuron}"]["detector"] if d["k"] == 1)
    vocab = gpt2_tokenizer().convert_ids_to_tokens(list(triggers))
    assert sorted(t[0] for t in token_card["triggers"]) == sorted(show_text(gpt2_tokenizer().convert_tokens_to_string([v]))
                                                                  for v in vocab)
    assert data["summary"] is not None and "every detector and positional neuron" in data["carried"]


def test_large_models_carry_a_bounded_set_and_say_so(report, monkeypatch):
    _, section, _ = report
    monkeypatch.setattr(neuron_browser, "MAX_CARDS", 2)
    monkeypatch.setattr(neuron_browser, "MAX_SUMMARY_NEURONS", 10)
    with open_counts(section.source["counts"]) as counts:
        data = neuron_browser.browser_data(section.results, counts, section.detectors, positional_rows(section.results))
    assert len(data["cards"]) == 2 and data["summary"] is None
    assert "the first 2 of" in data["carried"] and "no summary lines" in data["carried"]


def _dom(path, fragment, tmp_path):
    done = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom",
                           f"{path.as_uri()}#{fragment}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _result(dom) -> str:
    """The text of the search result slot of the first browser on the page."""
    match = re.search(r'<div class="nb-result">(.*?)</div><details>', dom, re.S)
    assert match, "the page has no neuron browser result slot"
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<br>", " ", re.sub(r"<(?!br>)[^>]+>", "", match.group(1)))))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_search_in_a_real_browser_finds_the_planted_detector_and_its_triggers(report, tmp_path):
    folder, section, spec = report
    page = folder / "report.html"
    neuron, triggers = next(iter(spec.detectors.items()))
    found = _result(_dom(page, f"neuron=0:{neuron}", tmp_path))
    assert f"layer 0 neuron {neuron}" in found and "k=1 detector" in found
    token_card = next(d for d in section.browser["cards"][f"0:{neuron}"]["detector"] if d["k"] == 1)
    assert len(token_card["triggers"]) == len(triggers)
    assert all(f"{text} {active}/{seen}" in found for text, active, seen in token_card["triggers"])
    oscillatory = next(iter(spec.oscillatory))
    assert "strong oscillatory" in _result(_dom(page, f"neuron=0%20{oscillatory}", tmp_path))
    clean = next(n for n in range(section.results.num_neurons)
                 if f"0:{n}" not in section.browser["cards"] and n not in spec.dead)
    assert "not a detector" in _result(_dom(page, f"neuron=0:{clean}", tmp_path))
    assert "No such neuron" in _result(_dom(page, "neuron=9:1", tmp_path))
