"""Two disjoint roles for the held-out (val) rows: the SELECTION split picks the checkpoint (val loss
and greedy replies at every evaluation, `mambaft.train.evaluation`), the TEST split gives the numbers
notebook 04 and `mambaft evaluate` report. The probes, the third role, are fixed prompts
(`mambaft.evaluate.probes`). Neither the test split nor the probes may choose anything: not a
checkpoint, not a recipe setting (issue 23: 17 of the 30 questions notebook 04 reported on had also
chosen the checkpoint).

The split is made per source on conversation ids, so every segment of one conversation takes the
same role: a source's val conversations are ordered by hash(seed, id) and take turns, test first,
so a source with k >= 2 conversations is in both splits (ceil(k/2) test, floor(k/2) selection; one
conversation goes to test). `prepare` stores each val row's role in the `heldout` column; a val
split without it (older data, hand-built tables) gets the same roles from the same function.

Rows of one role come in a stratified order: each source's rows spread evenly over the list (row i
of a source with m rows sits at (i + 0.5) / m), so the first N rows hold each source at its share of
the split (the first 30 stored val rows were once 22 wiki, 8 olmo_qa and no chatterbot).

    python -m pytest tests/test_splits.py
"""
from __future__ import annotations

from typing import Optional, Sequence

from mambaft.data.mix import _unit

SELECTION, TEST = "selection", "test"
ROLES = (SELECTION, TEST)
COLUMN = "heldout"          # the val split's column holding each row's role


def assign_roles(conversation_ids: Sequence[str], sources: Sequence[str], seed: int) -> list[str]:
    """Each val row's role (SELECTION or TEST), by conversation id, per source, seeded."""
    if len(conversation_ids) != len(sources):
        raise ValueError(f"{len(conversation_ids)} conversation ids but {len(sources)} sources")
    convs: dict = {}
    for c, s in zip(conversation_ids, sources):
        convs.setdefault(s, set()).add(c)
    role_of: dict = {}
    for s, ids in convs.items():
        order = sorted(ids, key=lambda c: (_unit(seed, f"heldout\x1f{s}\x1f{c}"), c))
        for i, c in enumerate(order):
            role_of[(s, c)] = TEST if i % 2 == 0 else SELECTION
    return [role_of[(s, c)] for c, s in zip(conversation_ids, sources)]


def stratified_order(indices: Sequence[int], sources: Sequence[str], seed: int) -> list[int]:
    """`indices` (rows of one role; `sources[k]` is the source of indices[k]) reordered so that every
    prefix holds each source near its share: row i of m of a source sits at (i + 0.5) / m; within a
    source, a seeded order."""
    by_source: dict = {}
    for i, s in zip(indices, sources):
        by_source.setdefault(s, []).append(i)
    keyed = []
    for s, rows in by_source.items():
        rows = sorted(rows, key=lambda i: (_unit(seed, f"heldout-order\x1f{s}\x1f{i}"), i))
        keyed += [((k + 0.5) / len(rows), s, i) for k, i in enumerate(rows)]
    return [i for _, _, i in sorted(keyed)]


def _columns(val_ds) -> tuple[list, list]:
    """(conversation ids, sources) of a val Dataset; a table without them is one source of one-row
    conversations."""
    n = len(val_ds)
    cols = set(val_ds.column_names)
    convs = list(val_ds["conversation_id"]) if "conversation_id" in cols else [str(i) for i in range(n)]
    sources = list(val_ds["source"]) if "source" in cols else ["all"] * n
    return convs, sources


def roles_of(val_ds, seed: int) -> list[str]:
    """Every val row's role: the `heldout` column that `prepare` wrote, else `assign_roles(seed)`."""
    if COLUMN in val_ds.column_names:
        roles = list(val_ds[COLUMN])
        bad = sorted(set(roles) - set(ROLES))
        if bad:
            raise ValueError(f"val column {COLUMN!r} holds {bad}: expected {' or '.join(ROLES)}")
        return roles
    convs, sources = _columns(val_ds)
    return assign_roles(convs, sources, seed)


def heldout_rows(val_ds, role: str, seed: int, limit: Optional[int] = None) -> list[int]:
    """Indices of the val rows of `role` (SELECTION, TEST, or "all"), in stratified order, at most
    `limit` of them."""
    if role not in ROLES + ("all",):
        raise ValueError(f"held-out split {role!r}: expected one of {', '.join(ROLES)}, all")
    _, sources = _columns(val_ds)
    roles = roles_of(val_ds, seed) if role != "all" else None
    idx = [i for i in range(len(val_ds)) if roles is None or roles[i] == role]
    out = stratified_order(idx, [sources[i] for i in idx], seed)
    return out if limit is None else out[:max(0, limit)]


def split_counts(val_ds, seed: int) -> dict:
    """{source: {"selection": rows, "test": rows}}: what notebook 01 and the report can show."""
    _, sources = _columns(val_ds)
    out: dict = {}
    for s, r in zip(sources, roles_of(val_ds, seed)):
        out.setdefault(s, {SELECTION: 0, TEST: 0})[r] += 1
    return dict(sorted(out.items()))
