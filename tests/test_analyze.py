"""`fastneurons.reporting.analyze.analyze` end to end on small real stores.

The stores are counted the plain way (forward hooks, `fastneurons.bench.plain_way`) on tiny OPTs (the
planted OPT of `fastneurons.demo.planted`, and a random one) and written with `fastneurons.store.CountsWriter`,
so these tests need neither the compiled kernels nor any download; each model is saved next to its
store so suppression can load its weights.
"""
import json

import numpy as np
import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM

from fastneurons.analysis.pipeline import AnalysisSettings
from fastneurons.reporting.analyze import analyze, choose_positional_examples, load_weights
from fastneurons.bench.plain_way import plain_record
from fastneurons.config import AnalyzeConfig
from fastneurons.ngrams.accumulator import SeenTable, Table
from fastneurons.demo.planted import build_planted_opt, default_spec
from fastneurons.store import Corpus, CountsWriter, DenseCounts, Header, open_counts

VOCAB = 64


def tiny_opt(path, layers=2, ffn=48, hidden=16, positions=64, seed=0):
    """A random pre-LN OPT with some rare and dead neurons (fc1 biases shifted down), saved to `path`."""
    torch.manual_seed(seed)
    config = OPTConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, ffn_dim=ffn,
                       num_attention_heads=2, max_position_embeddings=positions, word_embed_proj_dim=hidden)
    model = OPTForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.decoder.layers:
            layer.fc1.bias.add_(torch.linspace(-2.0, 0.3, ffn))
    model.save_pretrained(path)
    return model


def planted_opt(path, seq_len=64):
    """The planted OPT (detectors of tokens 3-5 and 7-8, dead and positional neurons in layer 0), saved to `path`."""
    spec = default_spec([3, 4, 5, 7, 8], vocab_size=VOCAB, hidden_size=32, ffn_dim=96, num_layers=2,
                        max_positions=seq_len, bos_token_id=2, eos_token_id=2, pad_token_id=1)
    model = build_planted_opt(spec)
    model.save_pretrained(path)
    return model


def write_store(path, model, domains, *, model_spec, vocab, ngram_layers=(0,), orders=(1, 2, 3), seq_len=32):
    """Count `domains` ({label: [input_ids tensors]}) with the plain hooks and write a finished counts store."""
    layers = list(range(len(model.model.decoder.layers)))
    counted = {}
    for label, batches in domains.items():
        pairs = [(ids, torch.ones_like(ids)) for ids in batches]
        counted[label] = plain_record(model, {i: m.fc1 for i, m in enumerate(model.model.decoder.layers)}, pairs,
                                      max_positions=seq_len, ngram_layers=list(ngram_layers), orders=list(orders))
    config = {k: v for k, v in model.config.to_dict().items() if not k.startswith("_")}
    meta = {"architecture": "opt", "model_config": config, "model": {"spec": str(model_spec), "path": str(model_spec)},
            "neuron_definition": "opt: fc1(x)[n] > 0.0 (ReLU output non-zero)", "threshold": 0.0,
            "count_bos": False, "pack_bits": 16, "num_neurons": int(config["ffn_dim"]), "max_positions": seq_len,
            "layers": layers, "ngram_layers": list(ngram_layers), "orders": list(orders), "positions": True,
            "seq_len": seq_len, "full_length": True, "batch_size": 4, "unit_batches": 1}
    labels = list(domains)
    header = Header(meta, list(vocab), [Corpus("fingerprint", {}, np.zeros(1, bool), len(labels))], labels)
    writer = CountsWriter.create(path, header, ngram_memory=1 << 26)
    parts = [counted[label] for label in labels]
    domain_active = np.stack([np.stack([p.active[layer] for layer in layers]) for p in parts]).astype(np.int64)
    dense = DenseCounts(
        tokens=sum(p.tokens for p in parts), pos_seen=sum(p.pos_seen for p in parts),
        active=domain_active.sum(axis=0),
        pos_active=np.stack([sum(p.pos_active[layer] for p in parts) for layer in layers]),
        nan_count=np.zeros(len(layers), np.int64), domain_tokens=np.array([p.tokens for p in parts], np.int64),
        domain_active=domain_active)
    runs = []
    for part in parts:
        tables = {(layer, k): Table(*part.ngram_active[layer, k], order=k) for layer in ngram_layers for k in orders}
        seen = {k: SeenTable(*part.ngram_seen[k], order=k) for k in orders}
        runs.append(writer.write_run(tables, seen))
    writer.commit(dense, 0, [0], runs)
    writer.finalize()
    return path


def random_batches(seed, sequences=8, seq_len=32, low=3, high=VOCAB):
    rng = np.random.default_rng(seed)
    ids = rng.integers(low, high, size=(sequences, seq_len))
    ids[:, 0] = 2  # BOS
    return [torch.as_tensor(ids[i:i + 4]) for i in range(0, sequences, 4)]


VOCAB_TEXT = [f"t{i}" for i in range(VOCAB)]
VOCAB_TEXT[5] = "<script>alert(1)</script>"
VOCAB_TEXT[6] = "\n"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    small = planted_opt(root / "opt-small")
    bigger = tiny_opt(root / "opt-bigger", layers=3, ffn=64, seed=1)
    corpus = {"code": random_batches(0, seq_len=64), "prose": random_batches(1, seq_len=64)}
    a = write_store(root / "small.h5", small, corpus,
                    model_spec=root / "opt-small", vocab=VOCAB_TEXT, seq_len=64)
    b = write_store(root / "bigger.h5", bigger, {"web": random_batches(2)}, model_spec=root / "missing-model",
                    vocab=VOCAB_TEXT, ngram_layers=(0, 1))
    return a, b, root


FAST = AnalysisSettings(null_samples=10)


def test_single_store_writes_every_output(stores, tmp_path):
    small, _, root = stores
    lines = []
    report = analyze(AnalyzeConfig(counts=[str(small)], out=str(tmp_path / "out"), formats=["png", "svg"],
                                   settings=FAST), log=lines.append)
    out = tmp_path / "out"
    assert report == out / "report.html" and report.is_file()
    assert all(line.startswith("wrote ") for line in lines) and f"wrote {report}" in lines
    document = json.loads((out / "results.json").read_text())
    assert document["source"]["counts"] == str(small)
    assert document["source"]["neuron_definition"].startswith("opt: fc1") and document["source"]["threshold"] == 0.0
    assert document["source"]["suppression_model"] == str(root / "opt-small")
    assert document["suppression_skipped"] is None  # the weights were loaded
    suppresses = dict(zip(document["suppression"]["0"]["neurons"], document["suppression"]["0"]["suppresses"]))
    assert suppresses == {10: True, 19: False}  # the planted detectors: 19 promotes its triggers
    assert document["positional"]["0"]["on_ranges"] == {"20": [[0, 15], [32, 47]]}
    assert "frequency" not in document["dead"]["0"]  # per_neuron=False by default
    assert document["domains"]["0"]["domains"] == ["code", "prose"]
    for name in ("layers", "detectors", "positional", "coverage", "domains"):
        assert (out / f"{name}.csv").is_file() or name in ("detectors", "positional")
    pngs = sorted(p.stem for p in (out / "figures").glob("*.png"))
    assert pngs == sorted(p.stem for p in (out / "figures").glob("*.svg"))
    assert {"fig1_dead_frequency", "fig5_projection_examples", "fig9_oscillatory_ranges"} <= set(pngs)
    html = report.read_text()
    assert html.count("<img ") == len(pngs)
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the trigger token, escaped (also in the browser's JSON)
    with open_counts(small) as counts:
        assert counts.complete


def test_model_that_cannot_be_loaded_only_skips_suppression(stores, tmp_path):
    _, bigger, _ = stores
    lines = []
    analyze(AnalyzeConfig(counts=[str(bigger)], out=str(tmp_path / "out"), formats=["png"], settings=FAST),
            log=lines.append)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and "could not be loaded" in warnings[0]
    document = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "could not be loaded" in document["suppression_skipped"] and document["suppression"] == {}
    assert "could not be loaded" in (tmp_path / "out" / "report.html").read_text()


def test_no_suppression_flag_and_mismatched_model(stores, tmp_path):
    small, bigger, root = stores
    analyze(AnalyzeConfig(counts=[str(small)], out=str(tmp_path / "a"), suppression=False, formats=["png"],
                          settings=FAST), log=lambda line: None)
    assert "not asked" in json.loads((tmp_path / "a" / "results.json").read_text())["suppression_skipped"]
    with open_counts(bigger) as counts:  # the 2-layer, 96-neuron model does not fit a 3-layer, 64-neuron store
        weights, spec, why = load_weights(counts, AnalyzeConfig(counts=[str(bigger)], model=str(root / "opt-small")))
    assert weights is None and spec is None and "do not match" in why


def test_several_stores_get_folders_cross_figures_and_a_combined_report(stores, tmp_path):
    small, bigger, _ = stores
    report = analyze(AnalyzeConfig(counts=[str(small), str(bigger)], out=str(tmp_path / "out"), formats=["png"],
                                   per_neuron=True, settings=FAST), log=lambda line: None)
    out = tmp_path / "out"
    assert report == out / "report.html"
    for name in ("small", "bigger"):
        assert (out / name / "results.json").is_file() and (out / name / "report.html").is_file()
    assert "frequency" in json.loads((out / "small" / "results.json").read_text())["dead"]["0"]
    assert (out / "figures" / "cross_dead_frequency.png").is_file()
    assert (out / "figures" / "cross_detectors_positional.png").is_file()
    html = report.read_text()
    sub = [(out / name / "figures").glob("*.png") for name in ("small", "bigger")]
    assert html.count("<img ") == 2 + sum(len(list(files)) for files in sub)  # + the two cross figures
    assert 'href="#small"' in html and 'id="bigger"' in html


def test_positional_examples_prefer_strong_and_large_mi():
    class P:
        def __init__(self, neurons, types, strengths, mi):
            self.neurons, self.types, self.strengths, self.mi = np.array(neurons), types, strengths, np.array(mi)

    class R:
        positional = {0: P([0, 1, 2], ["other", "other", "oscillatory"], ["weak", "strong", "strong"], [0.9, 0.2, 0.5]),
                      1: P([0], ["other"], ["weak"], [0.95])}

    chosen = choose_positional_examples(R(), per_type=2)
    assert [(c[0], c[1], c[2]) for c in chosen] == [(0, 2, "oscillatory"), (0, 1, "other"), (1, 0, "other")]


def test_missing_counts_file_is_a_clear_error(stores, tmp_path):
    small, _, _ = stores
    with pytest.raises(ValueError, match="no such counts file: .*nope.h5"):
        analyze(AnalyzeConfig(counts=[str(small), str(tmp_path / "nope.h5")], out=str(tmp_path / "out")),
                log=lambda line: None)
    assert not (tmp_path / "out").exists()  # refused before writing anything
