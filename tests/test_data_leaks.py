"""The plan's probes never reach training: questions and paraphrases are dropped, items of the same
kind are kept; the synthetic skill sets hold no probe."""
from __future__ import annotations

import pytest

from mambaft.data.filters import clean_conversation
from mambaft.data.leaks import probe_leak
from mambaft.data.sources import load_source
from mambaft.evaluate.probes import PROBES

# Written by hand: how a data set could ask each probe again in other words.
PARAPHRASES = [
    "what's the capital city of France?", "Name the capital of France.", "France's capital is which city?",
    "Quelle est la capitale française ?", "What is 2 + 2?", "How much is two plus two?", "Calculate 2 plus 2.",
    "Combien font deux plus deux ?", "Combien fait 2 et 2 ?", "what colour is the sky?",
    "Which color does the sky have on a clear day?", "De quelle couleur est le ciel ?",
    "Can you list 3 colours?", "Name three colors, please.", "Cite trois couleurs !",
    "Who was Orvald Trenchik?", "Tell me about the University of Velmora.", "My name is Camille.",
    "Say hello!", "Dis bonjour.",
]
# Same kinds, other items: they teach the skill without the probe's answer, and must be kept.
SAME_KIND = [
    "What is the capital of Italy?", "What is 3+5?", "What is 12 + 2?", "What is 2 + 3?", "What is 22+2?",
    "List three fruits.", "Name three animals.", "What colour is grass?", "Who is Albert Einstein?",
    "Tell me about Paris.", "Say goodbye politely.", "Combien font 3 + 4 ?",
]


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.id)
def test_every_probe_question_is_a_leak(probe):
    for m in probe.messages:
        if m["role"] == "user":
            assert probe_leak(m["content"]) is not None
            assert probe_leak(m["content"].upper() + "  ") is not None


@pytest.mark.parametrize("text", PARAPHRASES)
def test_paraphrases_are_leaks(text):
    assert probe_leak(text) is not None


@pytest.mark.parametrize("text", SAME_KIND)
def test_other_items_of_the_same_kind_are_kept(text):
    assert probe_leak(text) is None


def test_the_filter_drops_a_conversation_whose_later_turn_asks_a_probe():
    conv = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                         {"role": "user", "content": "what is two plus two"},
                         {"role": "assistant", "content": "4"}]}
    assert clean_conversation(conv) == (None, "probe")
    ok = {"messages": conv["messages"][:2]}
    assert clean_conversation(ok)[1] == "ok"


@pytest.mark.parametrize("name", ["skills_en", "skills_fr"])
def test_skill_sets_hold_no_probe_and_right_sums(name):
    rows = load_source(name).rows
    assert rows and all(r["source"] == name for r in rows)
    sums = [r for r in rows if ":sum:" in r["id"]]
    assert len(sums) == 120                      # 11 x 11 operands 0..10, without the probe's 2 + 2
    for r in sums:
        a, b = map(int, r["id"].rsplit(":", 1)[1].split("+"))
        assert r["messages"][1]["content"] == f"{a} + {b} = {a + b}."
    for r in rows:
        assert probe_leak(r["messages"][0]["content"]) is None, r
        assert "colo" not in r["messages"][0]["content"].lower() and "couleur" not in r["messages"][0]["content"]
    assert load_source(name).rows == rows         # deterministic


@pytest.mark.slow   # prepares every strategy from the registry cache (5-15 s each)
@pytest.mark.parametrize("strategy", ["quick", "conversational", "specialized", "smoke"])
def test_no_strategys_prepared_data_asks_a_probe(strategy, tmp_path):
    """Every row of every phase, train and val, of the strategy's offline CPU data: no user turn asks
    a probe or a paraphrase of one, and the sources that held such rows counted them."""
    from mambaft.config import make_config
    from mambaft.data.prepare import load_prepared, prepare
    from mambaft.data.registry import cached_path

    if not all(cached_path(p) for p in ("wiki", "chatterbot", "olmo", "sharegpt", "chitchat")):
        pytest.skip("registry cache not warm (mambaft registry wiki chatterbot olmo sharegpt chitchat)")
    out = tmp_path / "data"
    stats = prepare(make_config(strategy, budget="cpu", data_mode="offline"), out, progress=False)
    phases = [out / "phase1", out / "phase2"] if (out / "phase1").is_dir() else [out]
    rows = 0
    for phase in phases:
        dd = load_prepared(phase)
        for split in ("train", "val"):
            for msgs in dd[split]["messages"]:
                rows += 1
                for m in msgs:
                    if m["role"] == "user":
                        assert probe_leak(m["content"]) is None, (phase.name, split, m["content"])
    assert rows > 0
    per = [s for ph in (stats.get("phases") or {"": stats}).values() for s in ph["sources"].values()]
    assert all(set(s.get("filtered", {})) <= {"empty", "empty_turn", "non_alternating", "no_answer",
                                              "language", "probe"} for s in per)
