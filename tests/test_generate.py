"""Generation: O(1) decoding equals the original greedy generate, including past max_seq_len."""
import pytest
import torch

from mambaft.generate import generate, sample_next
from tests.numerics import STEP_TOL

pytestmark = pytest.mark.numerics   # fp32 results on this CPU's kernels: `make test` reruns them on the lowest ISA


# Greedy tokens are exact: along both reference paths the best logit leads the second by >= 0.0153
# (measured on every kernel), 25x the 6e-4 that two fp32 evaluations within FP32_FORWARD_TOL can move it.
def test_greedy_matches_original(tiny_model, tiny_reference):
    out = generate(tiny_model, tiny_reference["greedy_prompt"], max_new_tokens=24)
    assert torch.equal(out, tiny_reference["greedy_output"])


def test_greedy_past_max_seq_len_matches_original_crop(tiny_model, tiny_reference):
    # 120-token prompt + 16 new tokens crosses max_seq_len=128: the original crops to the last 128
    # tokens (positions restart at 0), and so do we.
    out = generate(tiny_model, tiny_reference["long_prompt"], max_new_tokens=16)
    assert torch.equal(out, tiny_reference["long_greedy_output"])


def test_batch_of_prompts_of_different_lengths(tiny_model, tiny_reference):
    rows = [tiny_reference["greedy_prompt"][0].tolist(), tiny_reference["long_prompt"][0].tolist()]
    out = generate(tiny_model, rows, max_new_tokens=24)
    assert out[0] == tiny_reference["greedy_output"][0].tolist()
    assert out[1][:136] == tiny_reference["long_greedy_output"][0].tolist()


@pytest.mark.slow   # a forward per position
def test_step_logits_equal_full_forward_at_every_position(tiny_model, tiny_reference):
    ids = tiny_reference["input_ids"]                      # [2, 40]
    with torch.no_grad():
        full = tiny_model(ids)["logits"]                   # [2, 40, 512]
    logits, state = tiny_model.prefill([ids[0, :1].tolist(), ids[1, :1].tolist()])
    got = [logits]
    for t in range(1, ids.shape[1]):
        got.append(tiny_model.step(ids[:, t], state))
    torch.testing.assert_close(torch.stack(got, dim=1), full, **STEP_TOL)


def test_prefill_state_equals_stepping_from_scratch(tiny_model, tiny_reference):
    ids = tiny_reference["input_ids"][:1]
    logits_a, state_a = tiny_model.prefill([ids[0, :25].tolist()])
    for t in range(25, 40):
        logits_a = tiny_model.step(ids[:, t], state_a)
    with torch.no_grad():
        full = tiny_model(ids)["logits"][:, -1]
    torch.testing.assert_close(logits_a, full, **STEP_TOL)


def test_stop_tokens_and_padding(tiny_model, tiny_reference):
    prompt = tiny_reference["greedy_prompt"]
    ref = tiny_reference["greedy_output"][0, 10:].tolist()    # 71, 71, 359, 187, ...
    out = generate(tiny_model, prompt, max_new_tokens=24, stop_token_ids=[359])
    assert out[0, 10:].tolist() == ref[:3]                    # stops right after emitting 359


def test_stream_callback_can_stop_a_row(tiny_model, tiny_reference):
    seen = []

    def stream(row, tok):
        seen.append(tok)
        return len(seen) == 5
    out = generate(tiny_model, tiny_reference["greedy_prompt"][0:1].tolist(), 24, stream=stream)
    assert len(out[0]) == 10 + 5 and seen == tiny_reference["greedy_output"][0, 10:15].tolist()


def test_sampling_is_seeded_and_respects_top_k():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]]).repeat(200, 1)
    a = sample_next(logits, temperature=1.0, top_k=2, generator=torch.Generator().manual_seed(1))
    b = sample_next(logits, temperature=1.0, top_k=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert set(a.tolist()) == {1, 2}                          # only the two best ever drawn
    c = sample_next(logits, temperature=1.0, top_p=0.5, generator=torch.Generator().manual_seed(1))
    assert set(c.tolist()) == {1}                             # p(1) = 0.71 > 0.5 alone


def test_repetition_controls_break_the_fixture_loop(tiny_model, tiny_reference):
    # The fixture's greedy output loops on token 71; a no-repeat 2-gram ban forbids "71 71" repeats.
    out = generate(tiny_model, tiny_reference["greedy_prompt"], 24, no_repeat_ngram_size=2)[0].tolist()
    bigrams = list(zip(out, out[1:]))
    assert len(bigrams) == len(set(bigrams))
    pen = generate(tiny_model, tiny_reference["greedy_prompt"], 24, repetition_penalty=1.5)[0, 10:].tolist()
    assert pen.count(71) < tiny_reference["greedy_output"][0, 10:].tolist().count(71)


def test_sampling_follows_the_distribution():
    # p = softmax([0, ln 3]) = [0.25, 0.75]: 4000 draws land within 4 sigma (sigma = sqrt(0.75 x 0.25 /
    # 4000) = 0.0068); the seeded generator makes the draw itself the same on every CPU
    logits = torch.tensor([[0.0, float(torch.log(torch.tensor(3.0)))]]).repeat(4000, 1)
    draws = sample_next(logits, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert abs(draws.float().mean().item() - 0.75) < 4 * 0.0068


def test_anti_repetition_controls_never_touch_stop_or_exempt_ids():
    from mambaft.generate import _apply_repetition_penalty, _ban_repeated_ngrams
    logits = torch.tensor([[3.0, 2.0, -1.0, 4.0, 1.0]])
    seen = [[0, 1, 2, 3, 0, 1]]               # every id but 4 seen; (0, 1) repeated
    _apply_repetition_penalty(logits, seen, 2.0, exempt=frozenset({3, 1}))
    assert logits.tolist() == [[1.5, 2.0, -2.0, 4.0, 1.0]]     # 0 and 2 penalised, 1 and 3 untouched
    _ban_repeated_ngrams(logits, [[0, 1, 3, 0, 1, 2, 0, 1]], 3, exempt=frozenset({3}))
    assert logits[0, 3] == 4.0 and logits[0, 2] == float("-inf")   # (0 1) -> 3 exempt, (0 1) -> 2 banned


def test_penalties_look_at_the_reply_only_so_an_end_token_in_the_prompt_still_ends():
    # The prompt holds the end token (an earlier turn); the end token leads the runner-up by 2.0 vs
    # 1.9, so dividing it by 1.1 (HF's whole-input penalty) would hand the argmax to the runner-up.
    from test_chat import EOS, ScriptedModel
    model = ScriptedModel([EOS], top=2.0, runner_up=(7, 1.9))
    prompt = [5, 6, EOS, 198, 7, 8]
    for kw in (dict(repetition_penalty=1.1), dict(no_repeat_ngram_size=1)):
        out = generate(model, [prompt], 8, stop_token_ids=(EOS,), **kw)[0]
        assert out == prompt + [EOS], kw
    # the reply's own tokens are penalised: a scripted "9 9 9" loses its repeats to the runner-up
    model = ScriptedModel([9, 9, 9, EOS], top=2.0, runner_up=(7, 1.9))
    assert generate(model, [[9]], 8, stop_token_ids=(EOS,), repetition_penalty=1.1)[0][1:3] == [9, 7]


def test_min_new_tokens_holds_back_stop_ids_per_row():
    from test_chat import EOS, ScriptedModel
    model = ScriptedModel([EOS, EOS, 5, EOS], top=2.0, runner_up=(7, 1.9))
    out = generate(model, [[1], [1, 2]], 8, stop_token_ids=(EOS,), min_new_tokens=2)
    assert out == [[1, 7, 7, 5, EOS], [1, 2, 7, 7, 5, EOS]]      # the end token comes at the 4th token
    assert generate(model, [[1]], 8, stop_token_ids=(EOS,))[0] == [1, EOS]   # 0: as before
