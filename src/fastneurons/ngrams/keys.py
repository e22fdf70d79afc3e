"""Packing k-grams of token ids into one uint64 key (SPEC §2), and the rows whose k-gram is recorded.

A k-gram ``x[p-k+1] .. x[p]`` has key ``sum_i x[p-k+1+i] << (pack_bits * (k-1-i))``: the oldest id
sits in the highest bits, so sorting keys of one order sorts k-grams lexicographically.
"""

from __future__ import annotations

import numpy as np

MAX_ORDER = 3
PACK_BITS_CHOICES = (16, 21)


def pack_bits_for_vocab(vocab_size: int) -> int:
    """Bits per token id in a key: 16 when the vocabulary fits in 2**16 ids, else 21 (up to 2**21)."""
    vocab_size = int(vocab_size)
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size <= 2**16:
        return 16
    if vocab_size <= 2**21:
        return 21
    raise ValueError(
        f"vocab_size {vocab_size} > 2**21: three ids no longer fit in a 64-bit key; "
        "exact n-gram tables support vocabularies up to 2**21 ids"
    )


def check_pack_bits(pack_bits: int) -> int:
    """Return ``pack_bits`` as int after checking it is one of the supported widths (16 or 21)."""
    if int(pack_bits) not in PACK_BITS_CHOICES:
        raise ValueError(f"pack_bits must be 16 or 21, got {pack_bits}")
    return int(pack_bits)


def check_orders(orders) -> tuple[int, ...]:
    """Return ``orders`` as a sorted tuple of distinct ints in 1..3, or raise ValueError."""
    orders = tuple(sorted({int(k) for k in orders}))
    if not orders or orders[0] < 1 or orders[-1] > MAX_ORDER:
        raise ValueError(f"n-gram orders must be in 1..{MAX_ORDER}, got {orders}")
    return orders


def check_token_ids(token_ids: np.ndarray, pack_bits: int, vocab_size: int | None = None) -> None:
    """Raise ValueError naming the first id that cannot be packed (< 0, >= 2**pack_bits, >= vocab)."""
    limit = 1 << check_pack_bits(pack_bits)
    if vocab_size is not None:
        limit = min(limit, int(vocab_size))
    if token_ids.size == 0:
        return
    bad = (token_ids < 0) | (token_ids >= limit)
    if bad.any():
        offending = int(token_ids[np.argmax(bad)])
        raise ValueError(
            f"token id {offending} cannot be packed into an n-gram key: ids must be in [0, {limit}) "
            f"(pack_bits={pack_bits}, vocab_size={vocab_size}); pass pack_bits=pack_bits_for_vocab(vocab)"
        )


def ngram_rows_and_keys(token_ids: np.ndarray, positions: np.ndarray, counted: np.ndarray,
                        k: int, pack_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose k-gram is recorded (counted and ``position - k + 1 >= 1``) and their uint64 keys.

    Relies on the row layout: the previous token of row ``r`` is row ``r - 1`` whenever
    ``positions[r] >= 1`` (see ``check_layout``). Ids are assumed already checked.
    """
    rows = np.flatnonzero(counted & (positions >= k)).astype(np.int64)
    ids = token_ids.astype(np.uint64, copy=False)
    keys = np.zeros(rows.size, dtype=np.uint64)
    for i in range(k):  # i = 0 is the oldest id x[p-k+1]
        keys |= ids[rows - (k - 1 - i)] << np.uint64(pack_bits * (k - 1 - i))
    return rows, keys


def pack_key(ids, pack_bits: int) -> int:
    """Key of one k-gram given as a sequence of ids, oldest first (e.g. ``(x[p-2], x[p-1], x[p])``)."""
    check_pack_bits(pack_bits)
    key = 0
    for token in ids:
        token = int(token)
        if not 0 <= token < (1 << pack_bits):
            raise ValueError(f"token id {token} does not fit in {pack_bits} bits")
        key = (key << pack_bits) | token
    return key


def unpack_key(key: int, k: int, pack_bits: int) -> tuple[int, ...]:
    """The k ids of one key, oldest first (inverse of ``pack_key``)."""
    mask = (1 << check_pack_bits(pack_bits)) - 1
    key = int(key)
    return tuple((key >> (pack_bits * (k - 1 - i))) & mask for i in range(k))


def unpack_keys(keys: np.ndarray, k: int, pack_bits: int) -> np.ndarray:
    """Vectorised ``unpack_key``: uint64 ``[M]`` keys -> int64 ``[M, k]`` ids, oldest first."""
    keys = np.asarray(keys, dtype=np.uint64)
    mask = np.uint64((1 << check_pack_bits(pack_bits)) - 1)
    out = np.empty((keys.size, k), dtype=np.int64)
    for i in range(k):
        out[:, i] = (keys >> np.uint64(pack_bits * (k - 1 - i))) & mask
    return out
