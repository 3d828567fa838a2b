"""Trim a training row to the tokens some trained prediction can see.

The as-trained MambaSWELU has no selective scan: the prediction at position t-1 (the logits scored
against label t) depends on tokens t-R .. t-1 only, R = its receptive field (1 + 6 blocks x 3 conv
taps = 19 tokens; `MambaSWELUConfig.receptive_field`). A token more than R positions before every
trained label reaches no trained logit, so its forward is wasted work and its gradient is exactly 0.
`trim_row` drops those tokens: a long user turn keeps only its last R tokens, a prompt before the
first answer likewise. The trimmed row carries `positions` (each kept token's position in the full
row), so the position embedding sees what it saw before.

Why this is exact. Where a cut joins two kept pieces (or a trimmed row follows another conversation
in a packed row), the conv of block i reads up to 3 tokens across it; the tokens it can pollute are
the first 3 x i of the piece after the cut, i.e. the first R - 1 tokens after 6 blocks. Every piece
starts R tokens before the first label it serves (the prediction for label t sits at t-1, R - 1
tokens after the piece's start at t-R), so no trained logit reads a polluted value, and the
polluted ones get no gradient. Each trained token therefore gets its untrimmed logits and loss, and
the step its untrimmed gradient (tests/test_trim.py: logits, loss and gradients, sorted and packed).

Only for the conv-only architecture: the selective upgrade's scan carries state over the whole row
(an unbounded receptive field), so nothing may be dropped there (`context_seen` says so).

    python -m pytest tests/test_trim.py
"""
from __future__ import annotations

from typing import Optional

from mambaft.template import IGNORE_INDEX


def context_seen(model_config) -> Optional[int]:
    """Tokens one prediction sees (itself included), or None when it is unbounded (selective)."""
    if getattr(model_config, "architecture", "original") != "original":
        return None
    return model_config.receptive_field


def kept_tokens(labels, seen: int) -> list[int]:
    """Indices of the tokens some trained prediction reads: for each trained label t >= 1, tokens
    t - seen .. t (t itself, so the next prediction finds it as input and label t stays in place).
    Label 0 is never scored (the loss predicts t from t-1), so it keeps nothing."""
    n = len(labels)
    # difference array over [t - seen, t]: O(n) whatever the number of trained labels
    cover = [0] * (n + 1)
    for t in range(1, n):
        if labels[t] != IGNORE_INDEX:
            cover[max(0, t - seen)] += 1
            cover[t + 1] -= 1
    kept, depth = [], 0
    for i in range(n):
        depth += cover[i]
        if depth:
            kept.append(i)
    return kept


def trim_row(row: dict, seen: int) -> dict:
    """`row` (input_ids, labels, optional positions) without the tokens no trained prediction sees.

    Returns a new dict: the same keys plus `positions` (the kept tokens' positions). The first token
    of every kept piece has label -100 (shown in tests/test_trim.py), so no label is ever scored
    across a cut. A row with no trained label keeps its last token: a one-token row that trains
    nothing, so the step's row count (and every micro-batch's shape) stays valid. An empty row stays
    empty (collate pads it; it trains nothing either way).
    """
    ids, labels = row["input_ids"], row["labels"]
    if len(labels) != len(ids):
        raise ValueError(f"row {row.get('id')!r}: {len(ids)} input_ids but {len(labels)} labels")
    positions = row.get("positions") or range(len(ids))
    keep = kept_tokens(labels, seen) or [len(ids) - 1][:len(ids)]
    out = dict(row)
    out.update(input_ids=[ids[i] for i in keep], labels=[labels[i] for i in keep],
               positions=[positions[i] for i in keep])
    return out
