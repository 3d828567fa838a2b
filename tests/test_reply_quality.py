"""Reply quality (issue 23): distinct and bare replies, words per reply, "too short to measure", on
hand-written replies counted by hand; then three stub models (always "A.", always "I don't know.",
varied replies) through the real generation path, the checkpoint choice and the bounds."""
from __future__ import annotations

import math

import pytest

from mambaft.evaluate.bounds import BOUNDS, probe_check, reply_checks
from mambaft.evaluate.metrics import (degeneration, distinct_replies, is_bare, is_option_letter, normalise_reply,
                                      reply_quality, reply_words, useful_replies)
from mambaft.evaluate.replies import EvalReply
from tests.canned import always_a, always_dont_know, canned_lm, varied

QUESTIONS = ["What is the capital of France?", "Tell me about the Moon.", "Name a primary colour.",
             "Why is the sky blue?", "How do bees make honey?", "What is 2+2?", "Who wrote Hamlet?",
             "Quelle est la capitale de la France ?", "What is a prime number?", "Say something kind."]


# --- the definitions, on hand-written replies ------------------------------------------------------------
def test_bare_is_under_three_words_or_a_lone_option_letter():
    assert reply_words("A. I you am a large.") == ["A.", "I", "you", "am", "a", "large."]    # 6 words
    assert reply_words("- - ...") == []                                                     # no letter, no word
    for bare in ("A.", "(b)", "C)", "d:", "", "   ", "Paris.", "It is", "- - -"):
        assert is_bare(bare), bare
    for full in ("It is Paris.", "I don't know.", "A. I you am a large.", "The Moon orbits Earth."):
        assert not is_bare(full), full
    assert is_option_letter(" (b) ") and is_option_letter("A.") and not is_option_letter("Ab.")


def test_distinct_replies_over_distinct_prompts():
    assert normalise_reply("A.") == normalise_reply("a") == "a"
    assert normalise_reply("I  don't know.") == normalise_reply("i don't KNOW")
    # 4 prompts; "A." and "a" are one reply: {a, paris, the moon is far} = 3 distinct of 4
    assert distinct_replies(["p1", "p2", "p3", "p4"], ["A.", "a", "Paris.", "The Moon is far."]) == 0.75
    # a constant reply to 10 prompts: 1 distinct of 10
    assert distinct_replies(QUESTIONS, ["A."] * 10) == pytest.approx(0.1)
    # 2 distinct prompts (p asked twice), 3 distinct replies: at most 1
    assert distinct_replies(["p", "p", "q"], ["x one two", "y one two", "z"]) == 1.0
    assert math.isnan(distinct_replies([], []))
    with pytest.raises(ValueError, match="2 prompts but 1 replies"):
        distinct_replies(["p", "q"], ["x"])


def test_useful_replies_stop_differ_and_are_not_bare():
    # p1 and p2 got the same full reply (1 distinct), p3 a bare one, p4 ran to the limit: 1 useful of 4
    texts = ["The Moon is far.", "The Moon is far.", "Paris.", "Blue sky is nice"]
    assert useful_replies(["p1", "p2", "p3", "p4"], texts, [True, True, True, False]) == 0.25


def test_quality_counts_words_and_replies_too_short_for_a_3_gram():
    texts = ["A.", "I don't know.", "The Moon is far away.", "a b"]
    q = reply_quality(["p1", "p2", "p3", "p4"], texts, [True] * 4)
    assert q["prompts"] == 4 and q["distinct_replies"] == 1.0
    assert q["mean_words"] == (1 + 3 + 5 + 2) / 4
    assert q["too_short_3"] == 2 / 4                    # "A." (1 piece) and "a b" (2): no 3-gram
    assert q["bare_rate"] == 2 / 4                      # the same two: too short to measure counts as bare
    assert q["useful_replies"] == 2 / 4


def test_too_short_to_measure_is_never_a_perfect_rep_3():
    rs = [EvalReply([i], [1, 2], "A.", "A.", "end_token") for i in range(5)]
    d = degeneration(rs)
    assert math.isnan(d["rep_3"]) and d["too_short_3"] == 1.0 and d["bare_rate"] == 1.0
    assert d["distinct_replies"] == pytest.approx(1 / 5) and d["mean_words"] == 1.0
    # and the bounds: unmeasured fails rep_3, it does not pass it
    checks = {c.rule: c.ok for c in reply_checks(1.0, None, d["distinct_replies"], d["bare_rate"])}
    assert checks == {"stops": True, "does not loop": False, "distinct replies": False, "not bare": False}


def test_the_bounds_are_the_issues_numbers_and_inclusive():
    assert (BOUNDS.min_stop, BOUNDS.max_rep_3, BOUNDS.min_distinct, BOUNDS.max_bare) == (0.9, 0.1, 0.8, 0.1)
    assert all(c.ok for c in reply_checks(0.9, 0.1, 0.8, 0.1))
    assert [c.ok for c in reply_checks(0.89, 0.11, 0.79, 0.11)] == [False] * 4
    assert probe_check(0.3, 0.2).ok and not probe_check(0.2, 0.2).ok and not probe_check(0.3, None).ok


# --- three stub models through generation, reply_behaviour, the choice and the bounds -----------------------
@pytest.fixture(scope="module")
def val_questions():
    """A val split of 10 conversations from 2 sources, every row a selection row (the `heldout` column
    as prepare writes it), so reply_behaviour answers all 10."""
    import datasets
    rows = [{"id": f"r{i}", "conversation_id": f"c{i}", "source": "wiki" if i % 2 else "chat", "kind": "chat",
             "heldout": "selection",
             "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "ref"}]}
            for i, q in enumerate(QUESTIONS)]
    return datasets.Dataset.from_list(rows)


def _behaviour(reply, val):
    from mambaft.train.evaluation import reply_behaviour, val_rows
    lm = canned_lm(reply, "stub")
    idx = val_rows(val, 32, seed=0)
    return reply_behaviour(lm.model, val, idx, lm.tokenizer, lm.template, max_new_tokens=24)


def test_stub_replies_measured_through_generation(val_questions):
    a = _behaviour(always_a, val_questions)
    assert a["val_replies"] == 10 and a["val_stop_rate"] == 1.0
    assert a["val_rep_3"] is None and a["val_too_short_3"] == 1.0          # "A." holds no 3-gram
    assert a["val_distinct"] == pytest.approx(1 / 10) and a["val_bare_rate"] == 1.0
    assert a["val_useful"] == 0.0 and a["val_mean_words"] == 1.0
    k = _behaviour(always_dont_know, val_questions)
    assert k["val_stop_rate"] == 1.0 and k["val_rep_3"] == 0.0 and k["val_too_short_3"] == 0.0
    assert k["val_distinct"] == pytest.approx(1 / 10) and k["val_bare_rate"] == 0.0   # 3 words: not bare
    assert k["val_useful"] == pytest.approx(1 / 10) and k["val_mean_words"] == 3.0
    v = _behaviour(varied, val_questions)
    assert v["val_stop_rate"] == 1.0 and v["val_distinct"] == 1.0 and v["val_bare_rate"] == 0.0
    assert v["val_useful"] == 1.0


def test_canned_stubs_lose_the_choice_and_fail_the_bounds(val_questions):
    from pathlib import Path

    from mambaft.train.choice import choose_checkpoint
    from mambaft.train.run_state import CheckpointRecord
    stubs = {100: always_a, 200: always_dont_know, 300: varied}
    rows = [{"step": step, "val_loss": 6.0, **_behaviour(fn, val_questions)} for step, fn in stubs.items()]
    # the canned ones get the lower validation loss: behaviour must still pick the varied one
    recs = [CheckpointRecord(step=s, path=Path(f"ck/{s}"), val_loss=vl) for s, vl in ((100, 6.1), (200, 6.2), (300, 6.5))]
    assert choose_checkpoint(recs, rows).step == 300
    # each stub alone against the varied one: the varied one wins both times
    for canned in (100, 200):
        pair = [r for r in recs if r.step in (canned, 300)]
        assert choose_checkpoint(pair, [r for r in rows if r["step"] in (canned, 300)]).step == 300
    verdicts = {r["step"]: [c.rule for c in reply_checks(r["val_stop_rate"], r["val_rep_3"], r["val_distinct"],
                                                         r["val_bare_rate"]) if not c.ok] for r in rows}
    assert verdicts == {100: ["does not loop", "distinct replies", "not bare"], 200: ["distinct replies"], 300: []}
