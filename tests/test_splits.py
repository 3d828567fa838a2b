"""The held-out roles (mambaft.data.heldout): the selection split chooses the checkpoint, the test split
gives the reported numbers; disjoint by conversation, stratified by source, seeded; on hand-made
tables and on every strategy's prepared data."""
from __future__ import annotations

import pytest

from mambaft.data.heldout import SELECTION, TEST, assign_roles, heldout_rows, roles_of, stratified_order


def _table(convs, sources, with_roles=None):
    import datasets
    d = {"conversation_id": list(convs), "source": list(sources), "messages": [[] for _ in convs]}
    if with_roles is not None:
        d["heldout"] = list(with_roles)
    return datasets.Dataset.from_dict(d)


def test_a_conversation_takes_one_role_and_each_source_is_in_both():
    # source a: 4 conversations (c1 in 3 rows), b: 2, c: 1 (it can only be in one split: test)
    convs = ["c1", "c1", "c2", "c3", "c1", "c4", "d1", "d2", "e1"]
    srcs = ["a", "a", "a", "a", "a", "a", "b", "b", "c"]
    roles = assign_roles(convs, srcs, seed=0)
    by_conv: dict = {}
    for c, r in zip(convs, roles):
        by_conv.setdefault(c, set()).add(r)
    assert all(len(rs) == 1 for rs in by_conv.values())                  # no conversation on both sides
    per = {s: sorted({next(iter(by_conv[c])) for c, s2 in zip(convs, srcs) if s2 == s}) for s in "abc"}
    assert per == {"a": [SELECTION, TEST], "b": [SELECTION, TEST], "c": [TEST]}
    # turns per source, test first: a's 4 conversations 2 + 2, b's 2 conversations 1 + 1
    assert sum(next(iter(by_conv[c])) == TEST for c in ("c1", "c2", "c3", "c4")) == 2
    with pytest.raises(ValueError, match="3 conversation ids but 2 sources"):
        assign_roles(["x", "y", "z"], ["a", "a"], 0)


def test_roles_are_seeded():
    convs = [f"c{i}" for i in range(40)]
    srcs = ["a"] * 40
    assert assign_roles(convs, srcs, 0) == assign_roles(list(convs), list(srcs), 0)
    assert assign_roles(convs, srcs, 0) != assign_roles(convs, srcs, 1)
    # a row's role does not depend on where the row sits
    assert assign_roles(convs[::-1], srcs, 0) == assign_roles(convs, srcs, 0)[::-1]


def test_stratified_order_keeps_each_source_at_its_share_of_any_prefix():
    # 6 rows of a, 3 of b (the stored val order: all of a first)
    order = stratified_order(list(range(9)), ["a"] * 6 + ["b"] * 3, seed=0)
    assert sorted(order) == list(range(9))
    src = ["a" if i < 6 else "b" for i in order]
    # row k of m sits at (k + 0.5) / m: a at 1/12, 3/12, 5/12, ..., b at 2/12, 6/12, 10/12
    assert src == ["a", "b", "a", "a", "b", "a", "a", "b", "a"]


def test_heldout_rows_read_the_column_or_compute_the_same_roles():
    convs = [f"c{i}" for i in range(12)]
    srcs = ["a"] * 8 + ["b"] * 4
    computed = assign_roles(convs, srcs, 5)
    plain, stored = _table(convs, srcs), _table(convs, srcs, computed)
    for role in (SELECTION, TEST):
        assert heldout_rows(plain, role, 5) == heldout_rows(stored, role, 5)
    # the stored column wins over the seed (the data was split with its own seed)
    assert roles_of(stored, 99) == computed
    sel, test = set(heldout_rows(plain, SELECTION, 5)), set(heldout_rows(plain, TEST, 5))
    assert not sel & test and len(sel | test) == 12 and len(heldout_rows(plain, "all", 5)) == 12
    assert len(heldout_rows(plain, TEST, 5, limit=3)) == 3
    with pytest.raises(ValueError, match="held-out split 'val'"):
        heldout_rows(plain, "val", 5)
    with pytest.raises(ValueError, match="holds \\['dev'\\]"):
        roles_of(_table(["x"], ["a"], ["dev"]), 0)


def test_training_scores_only_selection_rows():
    from mambaft.train.evaluation import val_rows
    convs = [f"c{i // 2}" for i in range(40)]          # 20 conversations of 2 rows each
    srcs = ["a" if i < 24 else "b" for i in range(40)]
    t = _table(convs, srcs)
    idx = val_rows(t, 100, seed=0)
    roles = roles_of(t, 0)
    assert idx and all(roles[i] == SELECTION for i in idx)
    assert len(val_rows(t, 4, seed=0)) == 4 and val_rows(t, 4, seed=0) == idx[:4]


def _val_tables(path):
    """The val split of a prepared folder, or of both phases of a specialized one."""
    from mambaft.data.prepare import load_prepared
    phases = [path / "phase1", path / "phase2"] if (path / "phase1").is_dir() else [path]
    return {p.name: load_prepared(p)["val"] for p in phases}


@pytest.mark.slow   # prepares every strategy (5-15 s each from the registry cache)
@pytest.mark.parametrize("strategy", ["quick", "conversational", "specialized", "smoke"])
def test_every_strategys_prepared_data_has_disjoint_splits_with_every_source(strategy, tmp_path):
    from mambaft.config import STRATEGIES, make_config
    from mambaft.data.prepare import prepare
    from mambaft.data.registry import cached_path

    assert strategy in STRATEGIES
    if not all(cached_path(p) for p in ("wiki", "chatterbot", "olmo", "sharegpt", "chitchat")):
        pytest.skip("registry cache not warm (mambaft registry wiki chatterbot olmo sharegpt chitchat)")
    prepare(make_config(strategy, budget="cpu", data_mode="offline"), tmp_path / "data", progress=False)
    for phase, val in _val_tables(tmp_path / "data").items():
        assert "heldout" in val.column_names, phase
        roles = list(val["heldout"])
        convs, srcs = list(val["conversation_id"]), list(val["source"])
        sel = {(s, c) for s, c, r in zip(srcs, convs, roles) if r == SELECTION}
        test = {(s, c) for s, c, r in zip(srcs, convs, roles) if r == TEST}
        assert sel and test and not sel & test, phase
        # every source with two val conversations or more is in both splits
        for s in set(srcs):
            n = len({c for s2, c in zip(srcs, convs) if s2 == s})
            assert n < 2 or ({c for s2, c in sel if s2 == s} and {c for s2, c in test if s2 == s}), (phase, s)
        # what training scores and what evaluation reports never meet
        from mambaft.evaluate.suite import heldout_split
        from mambaft.train.evaluation import val_rows
        chosen_on = {convs[i] for i in val_rows(val, 10_000, seed=0)}
        reported = set(heldout_split(val, TEST)["conversation_id"])
        assert chosen_on and reported and not chosen_on & reported, phase
