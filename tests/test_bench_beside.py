"""bench/beside.py: the bare forward beside each of record's batches runs once per pass-1 forward, turn
about before and after it, with every counter idle: the store is exactly the one recorded without it."""
import time

import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM

from fastneurons.bench.beside import BESIDE_PHASE, BareBeside
from fastneurons.bench.workers import _Phases
from fastneurons.config import RecordConfig
from fastneurons.models import architectures as archs
from fastneurons.models.loading import gpt2_tokenizer
from fastneurons.recording import counter, runner
from same_counts import assert_same_datasets, assert_same_store


@pytest.fixture(scope="module")
def model_and_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("beside")
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=50272, hidden_size=32, num_hidden_layers=2, ffn_dim=96, num_attention_heads=4,
                       max_position_embeddings=64, word_embed_proj_dim=32)
    OPTForCausalLM(config).eval().save_pretrained(root / "opt")
    gpt2_tokenizer().save_pretrained(root / "opt")
    (root / "text.txt").write_text("def add(a, b):\n    return a + b\n\nclass Point:\n    pass\n" * 20)
    return root / "opt", str(root / "text.txt")


def _record(model, corpus, out, ngrams):
    config = RecordConfig(model=str(model), corpus=[corpus], out=str(out), seq_len=32, batch_size=2, unit_batches=2,
                          ngrams=ngrams, progress=False, commit_seconds=0)
    return runner.record(config, log=lambda *args: None)


@pytest.mark.parametrize("ngrams", ["exact", "bounded"])
def test_the_beside_forwards_count_nothing_and_take_turns(model_and_corpus, tmp_path, monkeypatch, ngrams):
    model, corpus = model_and_corpus
    plain = _record(model, corpus, tmp_path / "plain.h5", ngrams)
    replaced = ((archs, "run_until"), (runner, "_run_units"), (runner, "time"), (counter.CounterHandle, "_count"))
    for owner, name in replaced:
        monkeypatch.setattr(owner, name, getattr(owner, name))  # undone after the test
    calls = []
    counted = archs.run_until
    monkeypatch.setattr(archs, "run_until", lambda *a, **k: (calls.append("counted"), counted(*a, **k))[1])
    phases = _Phases(cuda=False)
    state = BareBeside.install(phases)
    bare = state.bare_forward = lambda *a, **k: (calls.append("bare"), counted(*a, **k))[1]
    beside = _record(model, corpus, tmp_path / "beside.h5", ngrams)

    if ngrams == "exact":
        assert_same_store(plain, beside)
    else:
        assert_same_datasets(plain, beside, ("dense", "summaries", "counted"))
    pairs = [calls[i:i + 2] for i in range(0, len(calls), 2)]
    assert len(pairs) > 2 and pairs[0::2] == [["bare", "counted"]] * len(pairs[0::2])
    assert pairs[1::2] == [["counted", "bare"]] * len(pairs[1::2])
    assert phases.seconds[BESIDE_PHASE] > 0 and not state.idle and not state.in_pass_one
    lag = time.monotonic() - runner.time.monotonic()  # record's commit clock leaves the beside forwards out
    assert state.seconds > 0 and lag == pytest.approx(state.seconds, abs=1e-3)
    calls.clear()
    loaded, ids = OPTForCausalLM.from_pretrained(model).eval(), torch.ones(1, 4, dtype=torch.long)
    with torch.inference_mode():  # outside pass 1 (e.g. a second pass): no beside forward
        archs.run_until(loaded, archs.architecture_for(loaded), ids, torch.ones_like(ids), 0)
    assert calls == ["counted"] and bare is state.bare_forward
