"""The success probes: each pass rule on hand-written answers, and run_probes end to end on a
scripted model whose replies are fixed (so the pass rate is known in advance)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mambaft.evaluate.probes import (PROBES, first_number, new_proper_nouns, run_probes,
                                     summarize_probes)
from mambaft.template import DEFAULT_TEMPLATE
from mambaft.tokenizer import load_tokenizer

_spec = importlib.util.spec_from_file_location(
    "eval_scripted", Path(__file__).parent / "fixtures" / "eval" / "scripted.py")
scripted = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scripted)

P = {p.id: p for p in PROBES}

GOOD = {
    "capital_en": "The capital of France is Paris.",
    "capital_fr": "La capitale de la France est Paris.",
    "arithmetic_en": "2 + 2 = 4.",
    "arithmetic_fr": "2+2 font quatre.",
    "context_en": "Your name is Camille.",
    "context_fr": "Tu t'appelles Camille.",
    "no_invention_en": "I don't know who Orvald Trenchik is; I have no information about him.",
    "no_invention_fr": "Je ne connais pas le professeur Orvald Trenchik.",
    "one_word_en": "Blue.",
    "one_word_fr": "« Bleu »",
    "three_colors_en": "Red, green and blue.",
    "three_colors_fr": "Rouge, verte, bleu.",
    "stops_en": "Hello there!",
    "stops_fr": "Bonjour !",
}
BAD = {
    "capital_en": "The capital of France is Lyon.",
    "capital_fr": "La capitale est Marseille.",
    "arithmetic_en": "2 + 2 = 5.",
    "arithmetic_fr": "Deux plus deux font cinq, pas 4.",
    "context_en": "Your name is John.",
    "context_fr": "Je ne sais pas.",
    "no_invention_en": "He is a physicist who worked with Albert Einstein in Berlin.",
    "no_invention_fr": "Je ne sais pas, mais il est né à Lyon.",
    "one_word_en": "The sky is blue.",
    "one_word_fr": "Rouge",
    "three_colors_en": "Red, grey and gray.",
    "three_colors_fr": "Rouge, vert, bleu, jaune.",
    "stops_en": "",
    "stops_fr": "   ",
}


def test_probe_set_covers_the_plan_in_both_languages():
    kinds = {"capital", "arithmetic", "context", "no_invention", "one_word", "three_colors", "stops"}
    assert {(p.kind, p.lang) for p in PROBES} == {(k, l) for k in kinds for l in ("en", "fr")}
    assert len({p.id for p in PROBES}) == len(PROBES) == 14
    for p in PROBES:
        assert p.messages[-1]["role"] == "user" and p.rule


@pytest.mark.parametrize("pid", sorted(GOOD))
def test_pass_rules_on_hand_written_answers(pid):
    assert P[pid].check(GOOD[pid]) is True
    assert P[pid].check(BAD[pid]) is False


def test_rule_helpers():
    assert first_number("It is four, not 5", "en") == 4
    assert first_number("trois ou 7", "fr") == 3
    assert first_number("no digits", "en") is None
    # names not in the question, not sentence-initial
    assert new_proper_nouns("He met Marie Curie. Then he left.", "Who is he?") == ["Marie", "Curie"]
    assert new_proper_nouns("I think Orvald is unknown.", "Who is Orvald?") == []


def test_context_probe_puts_the_name_beyond_19_tokens():
    tok = load_tokenizer()
    for pid in ("context_en", "context_fr"):
        ids = DEFAULT_TEMPLATE.prompt_ids(list(P[pid].messages), tok)
        name_at = max(i for i, t in enumerate(ids) if "Camille" in tok.decode([t]) or
                      tok.decode(ids[i:i + 2]).strip().startswith("Camille"))
        assert len(ids) - name_at > 19, (pid, len(ids) - name_at)


def _script(answers: dict, end: bool = True) -> dict:
    tok = load_tokenizer()
    eos = [tok.eos_id] if end else []
    return {tuple(DEFAULT_TEMPLATE.prompt_ids(list(P[pid].messages), tok)):
            tok.encode(" " + text) + eos for pid, text in answers.items()}


def test_run_probes_on_a_scripted_model_all_pass():
    model = scripted.ScriptedModel(replies=_script(GOOD))
    res = run_probes(model, load_tokenizer(), DEFAULT_TEMPLATE, max_new_tokens=40)
    assert [r["id"] for r in res] == [p.id for p in PROBES]
    assert all(r["passed"] for r in res), [r for r in res if not r["passed"]]
    assert {r["stopped_by"] for r in res} == {"end_token"}
    assert res[0]["answer"] == GOOD["capital_en"]
    summary = summarize_probes(res)
    assert summary["pass_rate"] == 1.0 and summary["passed"] == 14


def test_run_probes_known_failures_and_stop_reasons():
    tok = load_tokenizer()
    answers = dict(GOOD)
    answers["capital_en"] = BAD["capital_en"]
    answers["arithmetic_fr"] = BAD["arithmetic_fr"]
    scripts = _script(answers)
    # stops_en writes the next turn's marker instead of the end token: text ok, probe fails
    stops_key = tuple(DEFAULT_TEMPLATE.prompt_ids(list(P["stops_en"].messages), tok))
    scripts[stops_key] = tok.encode(" Hello!\nUser: more") + [tok.eos_id]
    # stops_fr never stops: it runs to the limit
    del scripts[tuple(DEFAULT_TEMPLATE.prompt_ids(list(P["stops_fr"].messages), tok))]
    model = scripted.ScriptedModel(replies=scripts, default=tok.encode(" Bonjour"))
    res = {r["id"]: r for r in run_probes(model, tok, DEFAULT_TEMPLATE, max_new_tokens=30)}
    assert res["stops_en"]["stopped_by"] == "stop_string" and res["stops_en"]["answer"] == "Hello!"
    assert res["stops_en"]["text_ok"] and not res["stops_en"]["passed"]
    assert res["stops_fr"]["stopped_by"] == "limit" and res["stops_fr"]["n_new_tokens"] == 30
    assert res["stops_fr"]["hit_limit"] and not res["stops_fr"]["passed"]
    failed = sorted(k for k, r in res.items() if not r["passed"])
    assert failed == ["arithmetic_fr", "capital_en", "stops_en", "stops_fr"]
    s = summarize_probes(list(res.values()))
    assert s["pass_rate"] == pytest.approx(10 / 14)  # float64 Python arithmetic: approx's default rel 1e-6 absorbs the last bit
    assert s["by_kind"]["stops"] == 0.0 and s["by_kind"]["capital"] == 0.5
    assert s["by_lang"] == {"en": pytest.approx(5 / 7), "fr": pytest.approx(5 / 7)}


def test_run_probes_is_deterministic_on_a_real_model():
    from conftest import make_small_gpt2_model
    model = make_small_gpt2_model()
    tok = load_tokenizer()
    a = run_probes(model, tok, DEFAULT_TEMPLATE, max_new_tokens=8, seed=3)
    b = run_probes(model, tok, DEFAULT_TEMPLATE, max_new_tokens=8, seed=3)
    assert [r["raw"] for r in a] == [r["raw"] for r in b]
    assert all(r["n_new_tokens"] <= 8 for r in a)
