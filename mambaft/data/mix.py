"""Train/val split by conversation id, weighted mixing, and the text share of domain phases.

Split: a conversation goes to val when hash(seed, conversation_id) < val_fraction, so every segment
or thread of one conversation lands on the same side, whatever the order or the other sources.

Weights are repeat factors over a source's unique training examples: 1.0 = each once, 0.3 = a seeded
30 % subset, 2.0 = each twice, 2.5 = twice plus a 50 % subset. (Relative shares follow from them;
the planner turns them into epochs over the run.) Validation rows are never repeated: a weight
below 1 subsamples them the same way, so val mirrors the mix without duplicates.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np


def _unit(seed: int, key: str) -> float:
    """A number in [0, 1) fixed by (seed, key): same in every process and Python version."""
    h = hashlib.blake2b(f"{seed}\x1f{key}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0 ** 64


def split_by_conversation(conversation_ids: Sequence[str], val_fraction: float, seed: int) -> np.ndarray:
    """bool [n]: True = validation. If val_fraction > 0 and there are >= 2 conversations but the
    hash gave none to val, the conversation with the smallest hash goes there (tiny datasets)."""
    n = len(conversation_ids)
    if n == 0 or val_fraction <= 0:
        return np.zeros(n, dtype=bool)
    cache: dict[str, float] = {}
    for c in conversation_ids:
        if c not in cache:
            cache[c] = _unit(seed, c)
    u = np.array([cache[c] for c in conversation_ids])
    is_val = u < val_fraction
    if not is_val.any() and len(cache) >= 2:
        is_val = u == u.min()
    if is_val.all():  # every conversation drew val (one conversation, or val_fraction near 1)
        is_val = u != u.max()
        if is_val.all() or not is_val.any():
            is_val[:] = False
    return is_val


def weighted_indices(indices: Sequence[int], weight: float, seed: int, key: str,
                     allow_repeat: bool = True) -> list[int]:
    """Apply a repeat factor to one source's row indices (deterministic for seed and key)."""
    idx = list(indices)
    if weight <= 0 or not idx:
        return []
    whole = int(weight) if allow_repeat else min(1, int(weight))
    frac = weight - int(weight) if (allow_repeat or weight < 1) else 0.0
    out = idx * whole
    if frac > 0:
        rng = np.random.default_rng(int(_unit(seed, key) * 2**32))
        k = int(round(frac * len(idx)))
        out += sorted(rng.choice(idx, size=k, replace=False).tolist())
    return out


def text_rows_needed(chat_rows: int, text_fraction: float) -> int:
    """Text rows T so that T / (T + chat_rows) = text_fraction (0.3 with 7,000 chat rows -> 3,000)."""
    if text_fraction <= 0:
        return 0
    if text_fraction >= 1:
        raise ValueError("phase2_text_fraction=1 leaves no instruction data; use < 1")
    return int(round(chat_rows * text_fraction / (1 - text_fraction)))


def resize(indices: Sequence[int], target: int, seed: int, key: str) -> list[int]:
    """Exactly `target` of `indices`: a seeded subset, or whole repeats plus a subset."""
    idx = list(indices)
    if not idx or target <= 0:
        return []
    whole, rest = divmod(target, len(idx))
    rng = np.random.default_rng(int(_unit(seed, key) * 2**32))
    return idx * whole + sorted(rng.choice(idx, size=rest, replace=False).tolist())


def shuffled(indices: Sequence[int], seed: int) -> list[int]:
    order = np.random.default_rng(seed).permutation(len(indices))
    return [indices[i] for i in order]
