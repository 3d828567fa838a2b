"""Metrics on cases with known answers: a stub model whose log-probabilities are known in closed
form (p_next on token+1, the rest uniform), texts with known n-gram repetition, benchmark items
scored by hand."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import datasets
import pytest
import torch

from mambaft.evaluate import benchmarks as B
from mambaft.evaluate.lm import MambaLM
from mambaft.evaluate.metrics import (COMPLETE_ANSWERS, degeneration, distinct_n, end_token_probability,
                                      instruction_perplexity, masked_nll, reference_scores,
                                      repeated_ngram_rate, text_perplexity, validation_pairs)
from mambaft.evaluate.replies import EvalReply
from mambaft.template import DEFAULT_TEMPLATE
from mambaft.tokenizer import load_tokenizer
from tests.numerics import FP64_U, log_softmax_abs_error

FIX = Path(__file__).parent / "fixtures" / "eval"
_spec = importlib.util.spec_from_file_location("eval_scripted", FIX / "scripted.py")
scripted = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scripted)


class CharTokenizer:
    """One token per byte (vocab 256), so sequences are written by hand."""
    eos_id = 0

    def encode(self, text):
        return list(text.encode("latin-1"))

    def decode(self, ids):
        return bytes(ids).decode("latin-1")


# These tests are about arithmetic (masking, per-source means, windows, bytes, which tokens count), so
# the stub scores in float64: a log-probability over V = 50,257 logits is then off by at most
# (V + 2) u64 = 5.6e-12 nats on any CPU (tests/numerics.py), relative to the smallest per-token value
# checked (ln 2 = 0.69 nats) 8.1e-12: EXACT, twice that, is the relative tolerance of every closed form.
# (fp32 over 50,257 logits is only good to 3.0e-3 nats: kernels differ by 5e-5, which broke rel=1e-5
# on AVX2 CPUs; test_masked_nll_in_fp32_within_its_rounding_bound covers the fp32 path.)
EXACT = 2 * log_softmax_abs_error(50257, 12.0, FP64_U) / math.log(2)


def char_lm(p=0.5, dtype=torch.float64):
    return MambaLM(scripted.ScriptedModel(vocab_size=256, p_next=p, dtype=dtype), CharTokenizer(),
                   DEFAULT_TEMPLATE, name="char-stub")


def gpt2_lm(p=0.5, dtype=torch.float64):
    return MambaLM(scripted.ScriptedModel(p_next=p, dtype=dtype), load_tokenizer(), DEFAULT_TEMPLATE,
                   name="gpt2-stub")


MASKED_ROWS = [([5, 6, 7, 8, 100], [-100, -100, 7, 8, 100]),     # 7 after 6, 8 after 7: chain; 100: not
               ([40, 41, 42], [-100, 41, -100])]                 # 41 after 40: chain


# --- perplexity ------------------------------------------------------------------------------------
def test_masked_nll_known_values_per_source():
    lm = gpt2_lm(p=0.5)
    ln_p, ln_r = math.log(0.5), math.log(0.5 / 50256)
    res = masked_nll(lm, MASKED_ROWS, ["a", "b"])
    assert res["by_source"]["a"]["tokens"] == 3
    assert res["by_source"]["a"]["nll"] == pytest.approx(-(2 * ln_p + ln_r) / 3, rel=EXACT)
    assert res["by_source"]["b"]["ppl"] == pytest.approx(2.0, rel=EXACT)
    assert res["all"]["tokens"] == 4
    assert res["all"]["nll"] == pytest.approx(-(3 * ln_p + ln_r) / 4, rel=EXACT)
    with pytest.raises(ValueError, match="labels must be the ids"):
        masked_nll(lm, [([1, 2, 3], [-100, 9, 3])])


@pytest.mark.numerics
def test_masked_nll_in_fp32_within_its_rounding_bound():
    """The production path (fp32 log-softmax over 50,257 logits), on whatever kernels this CPU runs:
    each token's log-probability within log_softmax_abs_error (3.0e-3 nats, any summation order), so
    their mean is too."""
    ln_p, ln_r = math.log(0.5), math.log(0.5 / 50256)
    res = masked_nll(gpt2_lm(p=0.5, dtype=torch.float32), MASKED_ROWS)
    assert res["all"]["tokens"] == 4
    assert res["all"]["nll"] == pytest.approx(-(3 * ln_p + ln_r) / 4, abs=log_softmax_abs_error(50257, ln_r))


def test_instruction_perplexity_on_a_prepared_split_and_from_messages():
    lm = gpt2_lm()
    tok = load_tokenizer()
    convs = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
             [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]]
    rendered = [DEFAULT_TEMPLATE.render(c, tok) for c in convs]
    ds = datasets.Dataset.from_dict({"input_ids": [r[0] for r in rendered], "labels": [r[1] for r in rendered],
                                     "messages": convs, "source": ["chat", "math"]})
    res = instruction_perplexity(lm, ds)
    assert res["scored_from"].startswith("prepared")
    assert set(res["by_source"]) == {"chat", "math"}
    n_trained = sum(sum(1 for x in r[1][1:] if x != -100) for r in rendered)
    assert res["all"]["tokens"] == n_trained
    # the same numbers from the messages (what a non-mambaft model does)
    lm.kind = "other"
    again = instruction_perplexity(lm, ds.remove_columns(["input_ids", "labels"]))
    assert again["all"]["nll"] == pytest.approx(res["all"]["nll"], rel=EXACT)
    assert again["scored_from"].startswith("messages")


def test_text_perplexity_closed_form():
    lm = char_lm(p=0.5)
    res = text_perplexity(lm, ["abcdefgh"], window=4)
    # windows abcd, efgh: 3 + 3 scored tokens, each the successor of the last -> p = 0.5 each
    assert res["windows"] == 2 and res["tokens"] == 6 and res["bytes"] == 6
    assert res["ppl"] == pytest.approx(2.0, rel=EXACT)
    assert res["bpb"] == pytest.approx(1.0, rel=EXACT)
    # "aXa": X after a is not a successor (p = 0.5/255), a after X neither
    res = text_perplexity(lm, ["aXa"], window=8)
    assert res["ppl"] == pytest.approx(255 / 0.5, rel=EXACT)
    assert text_perplexity(lm, ["abcdefgh"], window=8, max_tokens=3)["tokens"] == 3


def test_end_token_probability_after_complete_answers():
    lm = gpt2_lm(p=0.5)
    res = end_token_probability(lm)
    # every answer ends with a token t != 50255, so p(50256 | ... t) = (1 - 0.5) / 50256
    assert res["per_pair"] == pytest.approx([0.5 / 50256] * len(COMPLETE_ANSWERS), rel=EXACT)
    assert res["above_half"] == 0.0
    # an answer whose last token is 50255 makes the end token the successor: p = p_next = 0.6
    lm = gpt2_lm(p=0.6)
    tok = load_tokenizer()
    ans = tok.decode([50255])
    assert tok.encode(" " + ans)[-1] == 50255
    res = end_token_probability(lm, [([{"role": "user", "content": "x"}], ans)])
    assert res["mean"] == pytest.approx(0.6, rel=EXACT) and res["above_half"] == 1.0


# --- degeneration ----------------------------------------------------------------------------------
# Counts divided in float64: pytest.approx's default (rel 1e-6) only absorbs the division's last bit.
def test_repetition_and_distinct_known_texts():
    assert repeated_ngram_rate("a b c a b c", 3) == pytest.approx(1 / 4)    # abc bca cab abc
    assert repeated_ngram_rate("a b c d", 2) == 0.0
    assert repeated_ngram_rate("the the the the the", 1) == pytest.approx(4 / 5)
    assert repeated_ngram_rate("a b", 3) is None
    assert distinct_n(["a b a", "b c"], 1) == pytest.approx(3 / 5)
    assert distinct_n(["a b a", "a b"], 2) == pytest.approx(2 / 3)          # ab ba ab


def test_degeneration_over_replies():
    rs = [EvalReply([], [1] * 6, "a b c a b c", "a b c a b c", "limit"),
          EvalReply([], [1] * 3, "x y z", "x y z", "end_token"),
          EvalReply([], [1] * 3, "p q", "p q", "stop_string"),
          EvalReply([], [1] * 4, "u v w u", "u v w u", "end_token")]
    d = degeneration(rs)
    assert d["rep_3"] == pytest.approx((0.25 + 0 + 0) / 3)     # "p q" has no trigram
    assert d["rep_2"] == pytest.approx((2 / 5 + 0 + 0 + 0) / 4)
    assert d["limit_rate"] == 0.25 and d["end_token_rate"] == 0.5 and d["stop_string_rate"] == 0.25
    assert d["mean_new_tokens"] == 4.0
    assert d["distinct_1"] == pytest.approx(11 / 15)


# --- BLEU / chrF -----------------------------------------------------------------------------------
def test_reference_scores():
    same = reference_scores(["the cat sat on the mat"], ["the cat sat on the mat"])
    # sacrebleu works in float64 (geometric means of exact precisions 1.0): default rel 1e-6 is ample
    assert same["bleu"] == pytest.approx(100.0) and same["chrf"] == pytest.approx(100.0)
    none = reference_scores(["qqqq"], ["the cat sat on the mat"])
    assert none["bleu"] == 0.0 and none["chrf"] < 5
    assert 0 < reference_scores(["the cat sat on a mat"], ["the cat sat on the mat"])["bleu"] < 100
    with pytest.raises(ValueError):
        reference_scores(["a"], [])


def test_validation_pairs_take_the_last_assistant_turn():
    ds = datasets.Dataset.from_dict({"messages": [
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
         {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}],
        [{"role": "assistant", "content": "orphan"}]]})
    pairs = validation_pairs(ds)
    assert len(pairs) == 1
    assert [m["content"] for m in pairs[0][0]] == ["a", "b", "c"] and pairs[0][1] == "d"


# --- benchmarks ------------------------------------------------------------------------------------
def test_benchmark_item_scored_by_hand():
    """Context "abc". Choice "dX": d follows c (ln p), X does not (ln r): sum ln p + ln r.
    Choice "Z[\\]^_`": Z does not follow c (ln r), then 6 successors: ln r + 6 ln p.
    With p = 0.5, r = 0.5/255: sums -6.93 vs -10.40 -> acc picks "dX";
    per byte -3.47 vs -1.49 -> acc_norm picks the second."""
    lm = char_lm(p=0.5)
    ln_p, ln_r = math.log(0.5), math.log(0.5 / 255)
    item = B.MCItem("abc", ("dX", "Z[\\]^_`"), label=1)
    lps = B.choice_logprobs(lm, [item])[0]
    assert lps == pytest.approx([ln_p + ln_r, ln_r + 6 * ln_p], rel=EXACT)
    res = B.score_items(lm, [item])
    assert res["predictions"] == [(0, 1, 1)]
    assert res["acc"] == 0.0 and res["acc_norm"] == 1.0 and res["chance"] == 0.5


def test_benchmark_fixtures_load_in_the_olmo_format():
    root = FIX / "benchmarks"
    hs = B.load_benchmark("hellaswag", root / "hellaswag/none/validation")
    assert hs[0].context == "Making tea: A woman fills a kettle with water. She"
    assert hs[0].choices[0] == " puts the kettle on the stove." and hs[0].label == 0
    assert hs[1].context == "Washing hands. : A boy turns on the tap. He"
    assert hs[1].choices[2] == " eats the soap quickly."
    arc = B.load_benchmark("arc_easy", root / "ai2_arc/ARC-Easy/validation")
    assert arc[0].context == "Question: Which of these is a liquid at room temperature?\nAnswer:"
    assert arc[0].label == 0 and arc[1].label == 0 and len(arc[1].choices) == 3   # numeric answerKey
    piqa = B.load_benchmark("piqa", root / "piqa/plain_text/validation", limit=1)
    assert len(piqa) == 1 and piqa[0].choices == (" Keep it in a closed bag.", " Leave it open on a radiator.")
    with pytest.raises(ValueError, match="missing field"):
        B.load_benchmark("piqa", root / "ai2_arc/ARC-Easy/validation")
    with pytest.raises(FileNotFoundError):
        B.load_benchmark("piqa", root / "nope")


def test_run_benchmarks_matches_direct_scoring():
    lm = gpt2_lm()
    root = FIX / "benchmarks"
    src = {"hellaswag": root / "hellaswag/none/validation", "arc_easy": root / "ai2_arc/ARC-Easy/validation",
           "piqa": root / "piqa/plain_text/validation"}
    res = B.run_benchmarks(lm, limit=None, source=src)
    assert set(res) == {"hellaswag", "arc_easy", "piqa"}
    # chance: a float64 mean of 1/n_choices; approx's default rel 1e-6 absorbs its last bit
    assert res["piqa"]["chance"] == 0.5 and res["arc_easy"]["chance"] == pytest.approx((1 / 4 + 1 / 3) / 2)
    direct = B.score_items(lm, B.load_benchmark("piqa", src["piqa"]))
    assert res["piqa"]["acc"] == direct["acc"]
