"""The planted OPT through record + analyze: exactly the planted neurons are found, nothing else."""
import pytest

from fastneurons.analysis.pipeline import analyze_counts
from fastneurons.models.architectures import ModelWeights
from fastneurons.config import RecordConfig
from fastneurons.demo.command import build_demo_model, check_planted, format_checks, frequent_tokens
from fastneurons.models.loading import gpt2_tokenizer, load_model
from fastneurons.demo.planted import build_planted_opt, default_spec
from fastneurons.recording.runner import record
from fastneurons.demo.stdlib_text import stdlib_text
from fastneurons.store import open_counts


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return stdlib_text(tmp_path_factory.mktemp("stdlib"), max_bytes=250_000)


@pytest.mark.parametrize("seed, seq_len, shape", [
    (0, 128, {}),
    (1, 64, {"hidden_size": 32, "ffn_dim": 128, "num_layers": 2}),
    (2, 256, {"hidden_size": 64, "ffn_dim": 192, "num_layers": 3}),
])
def test_planted_neurons_are_recovered_exactly(tmp_path, corpus, seed, seq_len, shape, monkeypatch):
    triggers = frequent_tokens(corpus, gpt2_tokenizer(), count=9, skip=10 + 7 * seed)
    if shape:  # build_demo_model takes the default shape; other shapes go through default_spec
        monkeypatch.setattr("fastneurons.demo.command.default_spec",
                            lambda ids, **kw: default_spec(ids, **{**kw, **shape}))
    spec = build_demo_model(tmp_path / "model", triggers, seq_len, seed)
    counts = tmp_path / "counts.h5"
    record(RecordConfig(model=str(tmp_path / "model"), corpus=[str(p) for p in corpus], out=str(counts),
                        tokens="40k", seq_len=seq_len, full_length=True, progress=False), log=lambda *a: None)
    loaded = load_model(str(tmp_path / "model"))
    with open_counts(counts) as store:
        results = analyze_counts(store, weights=ModelWeights(loaded.model, loaded.arch))
    checks = check_planted(results, spec, seq_len)
    assert all(c.ok for c in checks), format_checks(checks)
    assert len(results.detectors[1][0].neurons) == len(spec.detectors)  # no clean neuron is a detector


def test_check_fails_when_the_model_is_not_the_planted_one(tmp_path, corpus):
    """The comparison is not vacuous: a model planted with other triggers does not pass."""
    triggers = frequent_tokens(corpus, gpt2_tokenizer(), count=6)
    spec = build_demo_model(tmp_path / "model", triggers, 64, 0)
    other = default_spec(triggers[::-1], max_positions=64, seed=0)  # same neurons, other trigger groups
    build_planted_opt(other).save_pretrained(tmp_path / "model")
    counts = tmp_path / "counts.h5"
    record(RecordConfig(model=str(tmp_path / "model"), corpus=[str(p) for p in corpus], out=str(counts),
                        tokens="10k", seq_len=64, full_length=True, progress=False), log=lambda *a: None)
    with open_counts(counts) as store:
        results = analyze_counts(store)
    assert not all(c.ok for c in check_planted(results, spec, 64))


def test_demo_command_writes_the_report_and_recovers_everything(tmp_path):
    from fastneurons.cli import main

    assert main(["demo", "--out", str(tmp_path), "--tokens", "20k", "--seq-len", "64", "--corpus-bytes", "300k",
                 "--no-progress"]) == 0
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000
    table = (tmp_path / "planted_check.md").read_text()
    assert "| NO |" not in table and table.count("| yes |") >= 8
