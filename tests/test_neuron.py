"""One neuron looked up (`neuron_profile`, `fastneurons show`) on the planted OPT, whose answers are known."""
import json

import pytest

from fastneurons.analysis.neuron import neuron_profile
from fastneurons.analysis.pipeline import AnalysisSettings, analyze_counts
from fastneurons.cli import main
from fastneurons.models.architectures import ModelWeights
from fastneurons.models.loading import gpt2_tokenizer, load_model
from fastneurons.store import open_counts
from planted_store import record_planted_store

SETTINGS = AnalysisSettings(orders=(1, 2), null_samples=50)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return record_planted_store(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="module")
def analysed(planted):
    counts, _, _ = planted
    with open_counts(counts) as store:
        return analyze_counts(store, SETTINGS)


def test_profiles_agree_with_the_full_analysis(planted, analysed):
    """C_k, A_k, detector verdicts, I and type per neuron equal those of analyze_counts, neuron by neuron."""
    counts, _, spec = planted
    layer = 0
    neurons = sorted({*spec.detectors, *spec.positional_neurons, *spec.dead, 0, 1, 2, 100, 255})
    with open_counts(counts) as store:
        active = store.active(layer)
        for n in neurons:
            profile = neuron_profile(store, layer, n, SETTINGS)
            assert profile.active == active[n] and profile.dead == (active[n] == 0)
            assert sum(d["active"] for d in profile.domains) == profile.active
            for p in profile.ngrams:
                cov, det = analysed.coverage[p.k][layer], analysed.detectors[p.k][layer]
                assert (p.coverage_size, p.mass) == (cov.sizes[n], cov.mass[n])
                assert p.detector == (n in det.neurons.tolist())
                assert [t.active for t in p.top] == sorted((t.active for t in p.top), reverse=True)
            pos = analysed.positional[layer]
            assert profile.positional.mi == pytest.approx(pos.mi[n], abs=1e-12)
            assert profile.positional.positional == bool(pos.is_positional[n])
            if profile.positional.positional:
                i = pos.neurons.tolist().index(n)
                assert (profile.positional.type, profile.positional.strength) == (pos.types[i], pos.strengths[i])


def test_a_planted_detector_shows_its_triggers(planted):
    counts, model, spec = planted
    neuron, triggers = next(iter(spec.detectors.items()))
    loaded = load_model(str(model))
    with open_counts(counts) as store:
        profile = neuron_profile(store, 0, neuron, SETTINGS, weights=ModelWeights(loaded.model, loaded.arch))
    token = profile.ngrams[0]
    assert token.k == 1 and token.detector and profile.detector_orders == [1]
    assert sorted(t.ids[0] for t in token.triggers) == sorted(triggers)
    assert all(t.active >= 0.95 * t.seen for t in token.triggers)
    projection = profile.projection
    assert projection.suppresses_triggers == (neuron not in spec.promoting)
    assert len(projection.promoted) == SETTINGS.k_top
    assert projection.promoted[0][2] >= projection.promoted[-1][2] >= projection.suppressed[-1][2]
    json.dumps(profile.to_dict())


def test_show_prints_the_triggers_and_the_positional_type(planted, capsys):
    counts, _, spec = planted
    neuron, triggers = next(iter(spec.detectors.items()))
    assert main(["show", str(counts), "0", str(neuron), "--orders", "1", "--null-samples", "20"]) == 0
    text = capsys.readouterr().out
    assert "k=1:" in text and "DETECTOR" in text
    vocab = gpt2_tokenizer().convert_ids_to_tokens(list(triggers))
    line = next(x for x in text.splitlines() if "triggers G(n)" in x)
    assert all(f"[{t}]" in line for t in triggers) and len(vocab) == len(triggers)
    oscillatory = next(iter(spec.oscillatory))
    assert main(["show", str(counts), "0", str(oscillatory), "--orders", "1", "--null-samples", "20"]) == 0
    assert "POSITIONAL, strong oscillatory" in capsys.readouterr().out
    assert main(["show", str(counts), "0", str(oscillatory), "--orders", "1", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["positional"]["type"] == "oscillatory" and len(document["positional"]["fr"]) == 64


def test_bad_layer_or_neuron_is_one_line_and_exit_2(planted, capsys):
    counts, _, _ = planted
    assert main(["show", str(counts), "7", "0"]) == 2
    assert "layer 7 was not recorded" in capsys.readouterr().err
    assert main(["show", str(counts), "0", "256"]) == 2
    assert "out of range" in capsys.readouterr().err
