"""Conversations -> (input_ids, labels) with the ONE template, batched; text -> packed rows.

    render_conversations(convs, tok, train_on, max_seq_len) -> list[Rendered]
    render_batch(batch, tok, train_on, max_seq_len)          the same, as a `datasets.map` function
    pack_text(docs, tok, max_seq_len) -> rows                continued-pretraining rows, labels = ids

Rendering goes through `mambaft.template.DEFAULT_TEMPLATE.segments()`: each segment is tokenized on
its own and concatenated, exactly as `ChatTemplate.render` does (the tests check equality token by
token), only with all segments of a batch sent to the Rust tokenizer in one `encode_batch` call.
Because segments never merge across message boundaries, the ids of one message do not depend on
its neighbours: truncation can drop whole messages by slicing segments.

Truncation (rows longer than max_seq_len): drop whole oldest user+assistant turns (the system
message stays while it fits beside the last exchange; else it goes and as many whole recent turns
as fit are kept) until the rest fits; the final answer is never cut. If the last
exchange alone does not fit, the example is dropped ("too_long").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from mambaft.template import DEFAULT_TEMPLATE, IGNORE_INDEX, ChatTemplate


@dataclass
class Rendered:
    input_ids: list
    labels: list
    dropped_messages: int          # oldest messages removed to fit (0 = untouched)
    too_long: bool                 # even the last exchange does not fit: the row must be dropped
    kept: list                     # indices of the messages rendered


def _plan_start(lengths: list[int], roles: list[str], max_len: int) -> tuple[int, bool, bool]:
    """(first kept body message, keep the system message?, fits at all?) for per-message lengths."""
    has_system = bool(roles) and roles[0] == "system"
    sys_len = lengths[0] if has_system else 0
    first_body = 1 if has_system else 0
    total = sum(lengths)
    if total <= max_len:
        return first_body, has_system, True
    # Walk back from the end, accumulating; a start is legal only at a user message. Keep the
    # system message with the longest suffix it fits beside; when it fits beside none, drop it and
    # keep the longest suffix that fits alone (as many whole recent turns as fit, not just the last).
    suffix, with_system, alone = 0, None, None
    for k in range(len(lengths) - 1, first_body - 1, -1):
        suffix += lengths[k]
        if suffix > max_len:
            break
        if roles[k] == "user":
            alone = k
            if suffix + sys_len <= max_len:
                with_system = k
    if with_system is not None:
        return with_system, has_system, True
    if alone is not None:
        return alone, False, True
    return first_body, has_system, False


# Long conversations (ShareGPT: often 3-10x the window) are tokenized from the end, only as far
# back as can matter: a suffix of 6 characters per token of the window (English averages ~4.2) is
# tokenized first, and a conversation whose tokenized suffix does not yet overflow the window gets
# the rest in a second pass. The result is exactly the full rendering's (the tests compare them).
CHARS_PER_TOKEN_BOUND = 6


def _suffix_start(msgs: Sequence[dict], first_body: int, max_seq_len: Optional[int]) -> int:
    if max_seq_len is None:
        return first_body
    budget, chars, k = max_seq_len * CHARS_PER_TOKEN_BOUND, 0, len(msgs)
    while k > first_body:
        chars += len(msgs[k - 1]["content"])
        if chars > budget and k < len(msgs) - 1:  # the last exchange is always tokenized
            break
        k -= 1
    return k


def render_conversations(convs: Sequence[Sequence[dict]], tok, train_on: str = "all_assistant",
                         max_seq_len: Optional[int] = None,
                         template: ChatTemplate = DEFAULT_TEMPLATE) -> list[Rendered]:
    """Render message lists with batched tokenizer calls. Equal to `template.render` when nothing is
    cut; with `max_seq_len`, oldest whole turns are dropped as described in the module docstring."""
    end_id = template.end_id(tok)
    encoded: dict[str, list[int]] = {}

    def encode(pieces: set) -> None:
        texts = [t for t in pieces if t not in encoded]
        if texts:
            ids = tok.encode_batch(texts) if hasattr(tok, "encode_batch") else [tok.encode(t) for t in texts]
            encoded.update(zip(texts, ids))

    plans = []   # per conversation: segments, message -> (first, last) segment bounds, first tokenized message
    wanted: set = set()
    for msgs in convs:
        segs = template.segments(msgs, end_id, train_on)
        bounds, pos = [], 0
        for m in msgs:
            c = len(template.segments([m], end_id))
            bounds.append((pos, pos + c))
            pos += c
        first_body = 1 if msgs and msgs[0]["role"] == "system" else 0
        k = _suffix_start(msgs, first_body, max_seq_len)
        plans.append([segs, bounds, first_body, k])
        for mi in list(range(first_body)) + list(range(k, len(msgs))):
            wanted.update(p for p, _ in segs[bounds[mi][0]:bounds[mi][1]] if isinstance(p, str))
    encode(wanted)

    def msg_len(plan, mi) -> int:
        segs, bounds = plan[0], plan[1]
        return sum(1 if isinstance(p, int) else len(encoded[p]) for p, _ in segs[bounds[mi][0]:bounds[mi][1]])

    # second pass: conversations whose tokenized suffix still fits need their older messages too
    more: set = set()
    for msgs, plan in zip(convs, plans):
        segs, bounds, first_body, k = plan
        if k > first_body and sum(msg_len(plan, mi) for mi in range(k, len(msgs))) <= max_seq_len:
            for mi in range(first_body, k):
                more.update(p for p, _ in segs[bounds[mi][0]:bounds[mi][1]] if isinstance(p, str))
            plan[3] = first_body
    encode(more)

    out = []
    for msgs, plan in zip(convs, plans):
        segs, bounds, first_body, k = plan
        idx = list(range(first_body)) + list(range(k, len(msgs)))   # the tokenized messages
        lengths = [msg_len(plan, mi) for mi in idx]
        roles = [msgs[mi]["role"] for mi in idx]
        keep_sys, fits, start = first_body == 1, True, (1 if first_body else 0)
        if max_seq_len is not None:
            start, keep_sys, fits = _plan_start(lengths, roles, max_seq_len)
        kept = ([0] if keep_sys else []) + idx[start:] if first_body else idx[start:]
        ids: list[int] = []
        labels: list[int] = []
        for mi in kept:
            for p, trained in segs[bounds[mi][0]:bounds[mi][1]]:
                t = [p] if isinstance(p, int) else encoded[p]
                ids.extend(t)
                labels.extend(t if trained else [IGNORE_INDEX] * len(t))
        out.append(Rendered(ids, labels, len(msgs) - len(kept), not fits, kept))
    return out


def longest_reply(labels: Sequence[int]) -> int:
    """Tokens of the longest trained reply in a row, its end marker not counted: each trained reply is
    one run of labels != IGNORE_INDEX (the reply's tokens, then the end marker)."""
    longest = run = 0
    for x in labels:
        run = run + 1 if x != IGNORE_INDEX else 0
        longest = max(longest, run)
    return max(longest - 1, 0)


def render_batch(batch: dict, tok, train_on: str, max_seq_len: int, with_minhash: bool = True) -> dict:
    """`datasets.map(batched=True)` function: adds input_ids, labels, n_tokens, n_trained,
    dropped_messages, too_long, longest_reply and (for near-duplicate search) minhash."""
    rendered = render_conversations(batch["messages"], tok, train_on, max_seq_len)
    out = {
        # the messages actually rendered (oldest turns removed by truncation), so that
        # template.render(row["messages"]) == (row["input_ids"], row["labels"]) for every chat row
        "messages": [[m[i] for i in r.kept] for m, r in zip(batch["messages"], rendered)],
        "input_ids": [r.input_ids for r in rendered],
        "labels": [r.labels for r in rendered],
        "n_tokens": [len(r.input_ids) for r in rendered],
        "n_trained": [sum(1 for x in r.labels if x != IGNORE_INDEX) for r in rendered],
        "dropped_messages": [r.dropped_messages for r in rendered],
        "too_long": [r.too_long for r in rendered],
        "longest_reply": [longest_reply(r.labels) for r in rendered],
    }
    if with_minhash:
        from mambaft.data.filters import minhash
        out["minhash"] = minhash(out["input_ids"]).astype("int64").tolist()
    return out


def pack_text(docs: Sequence[dict], tok, max_seq_len: int, source: str) -> list[dict]:
    """Plain documents -> rows of exactly max_seq_len tokens (the last one shorter), documents joined
    by the end token, labels == input_ids (every token trained: continued pretraining)."""
    eos = tok.eos_id
    encoded = tok.encode_batch([d["text"] for d in docs]) if docs else []
    rows, cur, first_doc = [], [], None
    for d, ids in zip(docs, encoded):
        if first_doc is None:
            first_doc = d["id"]
        cur.extend(ids + [eos])
        while len(cur) >= max_seq_len:
            rows.append((first_doc, d.get("lang", "und"), cur[:max_seq_len]))
            cur = cur[max_seq_len:]
            first_doc = d["id"] if cur else None
    if cur:
        rows.append((first_doc, docs[-1].get("lang", "und"), cur))
    return [{"id": f"{source}:pack{i}", "conversation_id": f"{source}:{doc}", "source": source, "lang": lang,
             "kind": "text", "messages": [], "input_ids": ids, "labels": list(ids), "n_tokens": len(ids),
             "n_trained": len(ids), "dropped_messages": 0}
            for i, (doc, lang, ids) in enumerate(rows)]

