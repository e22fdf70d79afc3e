"""The store header's vocabulary strings: what ``batch_decode`` gives, by either path."""
import pytest

from fastneurons.models.loading import gpt2_tokenizer
from fastneurons.recording.header import _vocab_strings
from test_corpus import tiny_tokenizer


def one_by_one(tokenizer, size):
    known = min(len(tokenizer), size)
    return [tokenizer.decode([i]) for i in range(known)] + [""] * (size - known)


@pytest.mark.parametrize("make", [gpt2_tokenizer, tiny_tokenizer], ids=["byte-level BPE", "word level"])
def test_vocab_strings_decoded_in_the_backend_are_what_decode_gives(make, monkeypatch):
    tokenizer = make()
    tokenizer.clean_up_tokenization_spaces = False
    expected = one_by_one(tokenizer, len(tokenizer) + 3)
    monkeypatch.setattr(type(tokenizer), "batch_decode", lambda *a, **k: pytest.fail("not the backend's decode"))
    assert _vocab_strings(tokenizer, len(tokenizer) + 3) == expected  # ids past the tokenizer: ''
    assert _vocab_strings(tokenizer, 10) == expected[:10]


def test_a_tokenizer_that_cleans_up_spaces_decodes_through_transformers():
    tokenizer = tiny_tokenizer()
    tokenizer.clean_up_tokenization_spaces = True
    tokenizer.add_tokens([" ,"])  # a token the clean-up changes: ' ,' -> ','
    assert _vocab_strings(tokenizer, len(tokenizer)) == tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
