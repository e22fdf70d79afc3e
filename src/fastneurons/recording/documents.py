"""Corpus documents: input files -> documents -> token sequences of at most ``seq_len`` tokens (SPEC §1).

Reads .txt / .jsonl (texts or pre-tokenized ids, optionally gzipped) lazily, tokenises big documents
in pieces, and cuts them into sequences with a BOS (or, full length, packed with separators);
`corpus.plan_corpus` takes the sequences it needs from here. See docs/corpus.md.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

SUPPORTED_EXTENSIONS = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")
PIECE_CHARS = 1 << 18  # big documents are tokenised in pieces of at most this many characters
MAX_BATCH_CHARS = 1 << 20  # one tokenizer call gets about this many characters at most
FIRST_BATCH_CHARS = 1 << 16  # small first call, so a small budget reads little of a big file



@dataclass(frozen=True)
class CorpusSource:
    """One input file and the domain label its sequences are recorded under."""

    label: str
    path: Path



def parse_corpus_arg(arg: str | os.PathLike | CorpusSource) -> CorpusSource:
    """Parse a CLI corpus argument: `path` (label = file stem) or `label=path`."""
    if isinstance(arg, CorpusSource):
        return arg
    text = os.fspath(arg)
    if isinstance(arg, str) and "=" in text and not Path(text).exists():
        label, path = text.split("=", 1)
        if not any(sep in label for sep in "/\\"):
            if not label.strip() or not path:
                raise ValueError(f"corpus argument {text!r}: expected label=path with a non-empty label and path")
            return CorpusSource(label.strip(), Path(path))
    path = Path(text)
    return CorpusSource(_file_stem(path), path)


def _file_stem(path: Path) -> str:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return Path(name).stem or name


def check_format(path: Path) -> str:
    """Return "txt" or "jsonl" after checking the file exists and has a supported extension."""
    if not path.exists():
        raise ValueError(f"corpus file not found: {path}")
    if not path.is_file():
        raise ValueError(f"corpus path is not a file: {path}")
    name = path.name.lower()
    for ext in SUPPORTED_EXTENSIONS:
        if name.endswith(ext):
            return ext.split(".")[1]
    raise ValueError(f"unsupported corpus file {path}: supported extensions are {', '.join(SUPPORTED_EXTENSIONS)}")


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, "rt", encoding="utf-8", newline="")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- reading documents


CUT_BEFORE = " \t\n\r\x0b\x0c"  # ASCII whitespace: a cut may go just before one of these


def _last_cut(text: str, limit: int, chars: str) -> int:
    """Last index i in (0, limit) with text[i] in `chars` and text[i-1] not whitespace, else 0."""
    best = 0
    for ch in chars:
        i = text.rfind(ch, 0, limit)
        while i > 0 and text[i - 1].isspace():
            i = text.rfind(ch, 0, i)
        best = max(best, i)
    return best


def _split_point(text: str, limit: int) -> int:
    """Where to cut `text` (longer than `limit`): at most `limit` characters in, never at 0.

    Just before a whitespace character that follows a non-space one (a line end if there is one):
    a byte-level BPE (GPT-2, OPT) then tokenises the two pieces exactly as the whole. Else at `limit`."""
    return _last_cut(text, limit, "\n\r") or _last_cut(text, limit, CUT_BEFORE) or limit


def _pieces(chunks: Iterable[str], piece_chars: int) -> Iterator[str]:
    """Re-cut a stream of text chunks into pieces of at most `piece_chars` characters.

    The cut points depend only on the text, not on how it arrived in chunks."""
    buffer = ""
    for chunk in chunks:
        buffer += chunk
        while len(buffer) > piece_chars:
            cut = _split_point(buffer, piece_chars)
            yield buffer[:cut]
            buffer = buffer[cut:]
    if buffer:
        yield buffer


def _read_txt(path: Path, piece_chars: int) -> Iterator[tuple[int, str]]:
    """A .txt file is one document: yields (document number 1, piece) for its pieces."""
    try:
        with _open_text(path) as f:
            for piece in _pieces(iter(lambda: f.read(piece_chars), ""), piece_chars):
                yield 1, piece
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 ({e.reason}); convert the file to UTF-8") from None
    except (gzip.BadGzipFile, EOFError) as e:
        raise ValueError(f"{path}: not a valid gzip file ({e})") from None


def _read_jsonl(path: Path, seq_len: int, full_length: bool) -> Iterator[tuple[str, int, object]]:
    """Yield ("text", line, text) or ("ids", line, int64 array) per non-empty line of a .jsonl."""
    kind = None
    try:
        with _open_text(path) as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{line_no}: invalid JSON ({e.msg})") from None
                this = "ids" if isinstance(obj, list) else "text" if isinstance(obj, dict) else None
                if this is None:
                    raise ValueError(f"{path}:{line_no}: expected an object with a 'text' field or a list of token ids")
                if kind is None:
                    kind = this
                elif this != kind:
                    first = "token-id lists" if kind == "ids" else "text objects"
                    raise ValueError(f"{path}:{line_no}: mixes text objects and token-id lists (earlier lines are {first})")
                if kind == "text":
                    text = obj.get("text")
                    if not isinstance(text, str):
                        raise ValueError(f"{path}:{line_no}: object has no string 'text' field")
                    yield "text", line_no, text
                else:
                    if not all(type(x) is int for x in obj):
                        raise ValueError(f"{path}:{line_no}: token ids must all be integers")
                    if not full_length and len(obj) > seq_len:
                        raise ValueError(f"{path}:{line_no}: {len(obj)} token ids exceed seq_len={seq_len}; "
                                         "shorten the line, raise --seq-len, or pack with --full-length")
                    try:
                        ids = np.asarray(obj, dtype=np.int64).reshape(-1)
                    except OverflowError:
                        raise ValueError(f"{path}:{line_no}: token id out of int64 range") from None
                    yield "ids", line_no, ids
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 ({e.reason}); convert the file to UTF-8") from None
    except (gzip.BadGzipFile, EOFError) as e:
        raise ValueError(f"{path}: not a valid gzip file ({e})") from None


def _tokenize(pieces: Iterable[tuple[int, str]], tokenizer) -> Iterator[tuple[int, np.ndarray]]:
    """Batch-encode (document, text piece) pairs in order; yields (document, int64 ids).

    Calls grow from FIRST_BATCH_CHARS to MAX_BATCH_CHARS characters, so reading stops soon after
    the consumer stops asking."""
    limit, batch, docs, size = FIRST_BATCH_CHARS, [], [], 0

    def encode():
        out = tokenizer(batch, add_special_tokens=False, return_attention_mask=False, verbose=False)
        return [(d, np.asarray(ids, dtype=np.int64).reshape(-1)) for d, ids in zip(docs, out["input_ids"])]

    for doc, text in pieces:
        batch.append(text)
        docs.append(doc)
        size += len(text)
        if size >= limit:
            yield from encode()
            batch, docs, size, limit = [], [], 0, min(2 * limit, MAX_BATCH_CHARS)
    if batch:
        yield from encode()


def check_ids(ids: np.ndarray, vocab_size: int | None, where: str) -> None:
    if vocab_size is not None and ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = int(ids[(ids < 0) | (ids >= vocab_size)][0])
        raise ValueError(f"{where}: token id {bad} is outside the vocabulary [0, {vocab_size})")


def _cut(docs: Iterable[tuple[int, np.ndarray]], body: int, prefix: int | None, sep: int | None,
         pack: bool) -> Iterator[tuple[np.ndarray, int]]:
    """Cut a stream of (document, ids) into sequences; yields (sequence, documents read so far).

    Each sequence is `prefix` (if any) + up to `body` ids. pack=False: every document is cut on
    its own (its last piece shorter). pack=True: documents are joined with `sep` (if any) between
    them and cut into exactly `body` ids; the remainder is dropped."""
    head = np.array([] if prefix is None else [prefix], dtype=np.int64)
    between = np.array([] if sep is None else [sep], dtype=np.int64)
    buffer = np.zeros(0, dtype=np.int64)
    last_doc, doc_count, last_seen = None, 0, None
    for doc, ids in docs:
        if doc != last_seen:
            doc_count, last_seen = doc_count + 1, doc
        if ids.size == 0:
            continue
        if last_doc is not None and doc != last_doc:
            if pack:
                buffer = np.concatenate([buffer, between])
            elif buffer.size:
                yield np.concatenate([head, buffer]), doc_count
                buffer = buffer[:0]
        last_doc = doc
        buffer = np.concatenate([buffer, ids])
        start = 0
        while buffer.size - start >= body:
            yield np.concatenate([head, buffer[start:start + body]]), doc_count
            start += body
        buffer = buffer[start:]
    if buffer.size and not pack:
        yield np.concatenate([head, buffer]), doc_count


def open_domain(source: CorpusSource, tokenizer, seq_len: int, full_length: bool, resolve_ids,
                 vocab_size: int | None) -> tuple[str, Iterator[tuple[np.ndarray, int]]]:
    """Return the domain's kind ("text"/"token_ids") and a lazy iterator of its sequences."""
    fmt = check_format(source.path)
    path = source.path
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file")
    if fmt == "txt":
        kind, items = "text", None
    else:
        items = _read_jsonl(path, seq_len, full_length)
        first = next(items, None)
        if first is None:
            raise ValueError(f"{path}: empty corpus file (no JSON lines)")
        items = chain([first], items)
        kind = "text" if first[0] == "text" else "token_ids"

    if kind == "token_ids":
        def id_docs():
            for _, line_no, ids in items:
                check_ids(ids, vocab_size, f"{path}:{line_no}")
                yield line_no, ids
        docs = id_docs()
        body, prefix, sep = seq_len, None, None
    else:
        if tokenizer is None:
            raise ValueError(f"{path}: text needs a tokenizer; the checkpoint ships none: pass --tokenizer")
        bos, sep_id = resolve_ids()
        if fmt == "txt":
            pieces = _read_txt(path, PIECE_CHARS)
        else:
            pieces = ((line_no, piece) for _, line_no, text in items
                      for piece in _pieces([text], PIECE_CHARS))

        def text_docs():
            for doc, ids in _tokenize(pieces, tokenizer):
                check_ids(ids, vocab_size, f"{path} (document {doc}, tokenised)")
                yield doc, ids
        docs = text_docs()
        body, prefix, sep = seq_len - 1, bos, sep_id
    sequences = _cut(docs, body, prefix, sep, pack=full_length)

    def checked():
        empty = True
        for item in sequences:
            empty = False
            yield item
        if empty:
            if full_length:
                raise ValueError(f"{path}: too few tokens for one full-length sequence of {seq_len} tokens")
            raise ValueError(f"{path}: no tokens (empty file or empty documents)")
    return kind, checked()
