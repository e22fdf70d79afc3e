"""Lazy suppression weights (`analyze --weights lazy`): only the down projections and the unembedding are read.

Update directions and the unembedding equal the eager load's exactly on random checkpoints of OPT pre-LN,
OPT-350m-style post-LN with project_out, GPT-2, Llama and Gemma-2; the checkpoint keys read are exactly one
down projection (plus its FFN-output norm) per layer, project_out once and the unembedding once, and every
other weight stays on the meta device; `analyze` writes the same suppression results either way, and a
checkpoint lazy weights cannot read only skips suppression, naming the reason.
"""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fastneurons.config import AnalyzeConfig
from fastneurons.models import architectures as archs
from fastneurons.models.lazy import suppression_weights
from fastneurons.models import loading
from fastneurons.models.loading import load_model
from fastneurons.reporting.analyze import analyze, load_weights
from fastneurons.store import open_counts
import test_record_architectures as families
import test_runner as opt
from test_analyze import FAST, stores  # noqa: F401  (the planted OPT store and its model)

QUIET = lambda *args: None  # noqa: E731
CASES = ["opt_pre_ln", "opt_post_ln", "gpt2", "llama", "gemma2"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{case: directory} of random checkpoints (OPT post-LN has project_out: word_embed_proj_dim 16 < 32)."""
    root = tmp_path_factory.mktemp("lazy-analyze")
    paths = {"opt_pre_ln": opt._opt(root, "opt_pre_ln", pre_ln=True),
             "opt_post_ln": opt._opt(root, "opt_post_ln", pre_ln=False)}
    for seed, name in enumerate(("gpt2", "llama", "gemma2")):
        torch.manual_seed(seed)
        families.FAMILIES[name][0]().eval().save_pretrained(root / name)
        paths[name] = root / name
    return paths


@pytest.mark.parametrize("case", CASES)
def test_lazy_directions_and_unembedding_equal_the_eager_load(checkpoints, case):
    loaded = load_model(checkpoints[case], dtype="auto")
    eager = archs.ModelWeights(loaded.model, loaded.arch)
    lazy = suppression_weights(checkpoints[case], log=QUIET)
    assert lazy.num_layers == eager.num_layers >= 2 and lazy.arch == eager.arch
    assert all(p.is_meta for p in lazy.model.parameters())   # nothing read before it is asked for
    for layer in range(eager.num_layers):
        assert np.array_equal(lazy.update_directions(layer), eager.update_directions(layer))
        assert np.array_equal(lazy.update_directions(layer, [3, 0, 7]), eager.update_directions(layer, [3, 0, 7]))
    assert np.array_equal(lazy.unembedding(), eager.unembedding())
    if case == "opt_post_ln":
        assert lazy.update_directions(0).shape[0] == 16   # mapped through project_out


@pytest.mark.parametrize("case", CASES)
def test_lazy_reads_only_down_projections_and_the_unembedding(checkpoints, case):
    lazy = suppression_weights(checkpoints[case], log=QUIET)
    arch, layers = lazy.arch, lazy.num_layers
    lazy.unembedding()
    for layer in range(layers):
        lazy.update_directions(layer)
        lazy.update_directions(layer, [1])    # the resident layer is not read again
    reads = lazy.weights.reads
    has_projection = case == "opt_post_ln"
    per_layer = 1 + (arch.ffn_output_norm is not None)
    assert len(reads) == len(set(reads)) == 1 + layers * per_layer + has_projection, reads
    layer_reads = [key for key in reads[1:] if "project_out" not in key]
    wanted = (arch.down_module + ".weight",) + ((arch.ffn_output_norm + ".weight",) if arch.ffn_output_norm else ())
    assert all(key.endswith(wanted) for key in layer_reads), layer_reads
    for layer in range(layers):
        assert sum(f".{layer}.{arch.down_module}." in key for key in layer_reads) == 1
    real = sorted(name for name, p in lazy.model.named_parameters(remove_duplicate=False) if not p.is_meta)
    last = f"{arch.layers}.{layers - 1}."   # only the last layer asked stays, with project_out
    assert real == sorted(archs.suppression_parameters(lazy.model, arch, layers - 1)), real
    assert all(name.startswith(last) or "project_out" in name for name in real)


def test_analyze_writes_the_same_suppression_lazy_and_eager(stores, tmp_path, monkeypatch):  # noqa: F811
    small, _, root = stores
    documents = {}
    for weights in ("eager", "lazy"):
        if weights == "lazy":   # the lazy run must not fall back to the whole-checkpoint load
            monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("lazy analyze loaded eagerly"))
        out = tmp_path / weights
        analyze(AnalyzeConfig(counts=[str(small)], out=str(out), formats=["png"], settings=FAST, weights=weights),
                log=QUIET)
        documents[weights] = json.loads((out / "results.json").read_text())
    lazy, eager = documents["lazy"], documents["eager"]
    assert lazy["suppression_skipped"] is None and lazy["source"]["suppression_model"] == str(root / "opt-small")
    assert lazy["suppression"] == eager["suppression"] and lazy["suppression"]["0"]["neurons"] == [10, 19]


def test_weights_choice_is_checked():
    with pytest.raises(ValueError, match="--weights 'mmap'"):
        AnalyzeConfig(counts=["x.h5"], weights="mmap").validate()


def test_a_checkpoint_lazy_weights_cannot_read_only_skips_suppression(stores, checkpoints, tmp_path):  # noqa: F811
    small, _, _ = stores
    source = checkpoints["opt_pre_ln"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((source / "config.json").read_text())
    tensors = load_file(str(source / "model.safetensors"))
    del tensors[next(key for key in tensors if key.endswith("layers.1.fc2.weight"))]
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with open_counts(small) as counts:
        weights, spec, why = load_weights(counts, AnalyzeConfig(counts=[str(small)], model=str(broken),
                                                                 weights="lazy"), log=QUIET)
    assert weights is None and spec is None
    assert "could not be loaded" in why and "no checkpoint key" in why and "layers.1.fc2.weight" in why
