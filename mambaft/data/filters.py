"""Quality filters and duplicate removal, each drop counted with its reason.

    clean_conversation(conv, languages) -> (conv or None, reason)   empty / alternation / language
    exact_key(conv) -> str                                          normalised-text hash
    minhash(token_lists) -> uint32 [n, NUM_PERM]                    signatures for near duplicates
    near_duplicates(signatures, eligible) -> [index of the kept twin or -1]

Near duplicates: MinHash over 5-token shingles of the rendered example (NUM_PERM = 32 hash functions,
LSH with 8 bands of 4 rows), confirmed when the estimated Jaccard similarity is >= 0.8. A pair with
true similarity 0.8 shares a band with probability 1 - (1 - 0.8**4)**8 = 0.99; at 0.5 only 0.40, and
those candidates are then rejected by the estimate. Short rows (< 64 tokens) are only deduplicated
exactly: the template's own tokens make every short pair look alike.
"""
from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import numpy as np

from mambaft.data.leaks import conversation_leak

NUM_PERM = 32
BANDS = 8                          # 8 bands x 4 rows = 32
NEAR_THRESHOLD = 0.8
SHINGLE = 5                        # tokens per shingle
MINHASH_MAX_TOKENS = 256           # the first 256 tokens decide (bounds the cost of long rows)
NEAR_MIN_TOKENS = 64

_rng = np.random.default_rng(20240917)   # fixed: signatures must match across runs and processes
_A = (_rng.integers(1, 2**63, NUM_PERM, dtype=np.uint64) | np.uint64(1))
_B = _rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64)
_SHINGLE_MULT = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                          0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD], dtype=np.uint64)


def clean_conversation(conv: dict, languages: Optional[Sequence[str]] = None) -> tuple[Optional[dict], str]:
    """Strip contents and enforce [system] user assistant user assistant ... ending on an answer.

    Repairs (counted, not dropped): leading assistant turns (a ShareGPT segment that starts mid-
    conversation) and trailing user turns (no answer to learn) are cut. Drops: "empty" (no messages),
    "empty_turn", "non_alternating", "no_answer", "language" (a known language not in `languages`;
    undetermined "und" rows pass), "probe" (a user turn asks one of the plan's probes or a paraphrase
    of it: mambaft.data.leaks; the probes must measure skills, not memory).
    """
    msgs = [{"role": m["role"], "content": m["content"].strip()} for m in conv["messages"]]
    if not msgs:
        return None, "empty"
    if any(not m["content"] for m in msgs if m["role"] != "system"):
        return None, "empty_turn"
    system = [msgs[0]] if msgs[0]["role"] == "system" and msgs[0]["content"] else []
    body = msgs[1:] if msgs[0]["role"] == "system" else msgs
    reason = "ok"
    if body and body[0]["role"] == "assistant":
        while body and body[0]["role"] == "assistant":
            body = body[1:]
        reason = "trimmed"
    if body and body[-1]["role"] == "user":
        body = body[:-1]
        reason = "trimmed"
    if not any(m["role"] == "assistant" for m in body):
        return None, "no_answer"
    for i, m in enumerate(body):
        if m["role"] != ("user" if i % 2 == 0 else "assistant"):
            return None, "non_alternating"
    if languages and conv.get("lang", "und") not in ("und", *languages):
        return None, "language"
    if conversation_leak({"messages": body}):
        return None, "probe"
    return {**conv, "messages": system + body}, reason


def exact_key(conv: dict) -> str:
    """Same text up to case and whitespace -> same key (roles included, source excluded)."""
    text = "\x1e".join(f"{m['role']}\x1f{' '.join(m['content'].lower().split())}" for m in conv["messages"])
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def minhash(token_lists: Sequence[Sequence[int]]) -> np.ndarray:
    """uint32 [n, NUM_PERM] MinHash signatures of 5-token shingles (vectorised over a batch).
    uint64 arithmetic wraps modulo 2**64 on purpose: it is a hash, and the top 32 bits are kept."""
    n = len(token_lists)
    out = np.zeros((n, NUM_PERM), dtype=np.uint32)
    if n == 0:
        return out
    shingles, starts = [], []
    total = 0
    for toks in token_lists:
        t = np.asarray(toks[:MINHASH_MAX_TOKENS], dtype=np.uint64)
        if len(t) < SHINGLE:
            t = np.concatenate([t, np.zeros(SHINGLE - len(t), dtype=np.uint64)])
        m = len(t) - SHINGLE + 1
        h = np.zeros(m, dtype=np.uint64)
        for j in range(SHINGLE):
            h += t[j:j + m] * _SHINGLE_MULT[j]
        starts.append(total)
        shingles.append(h)
        total += m
    allh = np.concatenate(shingles)                               # [total]
    with np.errstate(over="ignore"):
        perm = (allh[:, None] * _A[None, :] + _B[None, :]) >> np.uint64(32)  # [total, NUM_PERM]
    out[:] = np.minimum.reduceat(perm, np.asarray(starts), axis=0).astype(np.uint32)
    return out


def near_duplicates(signatures: np.ndarray, eligible: Optional[np.ndarray] = None,
                    threshold: float = NEAR_THRESHOLD) -> np.ndarray:
    """For each row, the index of an earlier row it nearly duplicates, else -1 (earlier rows win,
    so the result depends only on the order, which the caller fixes)."""
    n = len(signatures)
    twin = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return twin
    rows = NUM_PERM // BANDS
    buckets: list[dict] = [{} for _ in range(BANDS)]
    sig = np.ascontiguousarray(signatures)
    for i in range(n):
        if eligible is not None and not eligible[i]:
            continue
        keys = [sig[i, b * rows:(b + 1) * rows].tobytes() for b in range(BANDS)]
        for b, key in enumerate(keys):
            j = buckets[b].get(key)
            if j is not None and np.mean(sig[i] == sig[j]) >= threshold:
                twin[i] = j
                break
        if twin[i] < 0:
            for b, key in enumerate(keys):
                buckets[b].setdefault(key, i)
    return twin
