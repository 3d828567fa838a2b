"""Chat text layer: stop strings and the end token, streaming deltas, history within max_seq_len,
seeds, and the fixed-prompt answer table. A scripted model (logits we control) forces exact outputs;
the small GPT-2-vocabulary MambaSWELU checks the layer against a direct `generate` call."""
from __future__ import annotations

import time

import pytest
import torch

from mambaft.chat import AnswerTable, ChatSession, ChatSettings, ReplyDecoder, answer_table
from mambaft.chat.text import find_stop, held_back_suffix
from mambaft.generate import generate
from mambaft.model import MambaSWELUConfig
from mambaft.template import DEFAULT_TEMPLATE
from mambaft.tokenizer import load_tokenizer

TOK = load_tokenizer()
EOS = TOK.eos_id                      # 50256
STOPS = (*DEFAULT_TEMPLATE.stop_strings, DEFAULT_TEMPLATE.end_of_turn)
GREEDY = ChatSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=32)


class ScriptedModel(torch.nn.Module):
    """Ignores its input and emits `script` (then `fill` forever): logit `top` (20) on the scripted
    id, 0 elsewhere, and `runner_up=(id, logit)` when given: a close second that any penalty on the
    scripted id makes win. Records every batch of prompts it is given and how many decode steps it ran."""

    def __init__(self, script, max_seq_len: int = 64, architecture: str = "original",
                 fill: int = 13, step_delay: float = 0.0, top: float = 20.0, runner_up=None):
        super().__init__()
        self.config = MambaSWELUConfig(vocab_size=50257, d_model=4, n_layers=6, max_seq_len=max_seq_len,
                                       architecture=architecture)   # receptive field 1 + 6 x 3 = 19
        self.token_embedding = torch.nn.Embedding(1, 1)          # generate reads its device
        self.script, self.fill, self.step_delay = list(script), fill, step_delay
        self.top, self.runner_up = top, runner_up
        self.prompts: list = []
        self.steps = 0

    def _logits(self, ks):
        out = torch.zeros(len(ks), self.config.vocab_size)
        if self.runner_up is not None:
            out[:, self.runner_up[0]] = self.runner_up[1]
        for b, k in enumerate(ks):
            out[b, self.script[k] if k < len(self.script) else self.fill] = self.top
        return out

    def prefill(self, rows):
        self.prompts.append([list(r) for r in rows])
        state = {"k": [0] * len(rows)}
        return self._logits(state["k"]), state

    def step(self, tokens, state):
        self.steps += 1
        if self.step_delay:
            time.sleep(self.step_delay)
        state["k"] = [k + 1 for k in state["k"]]
        return self._logits(state["k"])


def scripted_session(text: str, end: bool = True, settings: ChatSettings = GREEDY, **kw) -> ChatSession:
    script = TOK.encode(text) + ([EOS] if end else [])
    return ChatSession(ScriptedModel(script, **kw), TOK, DEFAULT_TEMPLATE, settings, name="scripted")


# --- ReplyDecoder ------------------------------------------------------------------------------
def test_stop_prefix_arithmetic():
    assert held_back_suffix("Paris.\nUs", STOPS) == 3          # "\nUs" may become "\nUser:"
    assert held_back_suffix("Paris.", STOPS) == 0
    assert held_back_suffix("a <|endo", STOPS) == 6            # "<|endo" may become "<|endoftext|>"
    assert held_back_suffix("Paris.\nUser:", STOPS) == 0       # a whole stop is found, not held
    assert find_stop("A.\nUser: B\nUser:", STOPS) == (2, "\nUser:")
    assert find_stop("A<|endoftext|>\nUser:", STOPS) == (1, "<|endoftext|>")


def test_deltas_never_split_a_multibyte_character_and_stop_at_next_turn():
    ids = TOK.encode(" Oui, ça va.\nUser: et toi?")
    assert ids[3:5] == [6184, 100]          # "ç" (C3 A7) is split: " \xc3" + "\xa7"
    dec = ReplyDecoder(TOK, STOPS)
    deltas = []
    for n, i in enumerate(ids, 1):
        deltas.append(dec.push(i))
        if dec.done:
            break
    assert n == len(TOK.encode(" Oui, ça va.\nUser:"))   # stopped on the ":" of "\nUser:", not later
    assert deltas == ["O", "ui", ",", "", " ç", "a", " va", ".", "", "", ""]
    assert "".join(deltas) == dec.reply == "Oui, ça va." == DEFAULT_TEMPLATE.clean_reply(TOK.decode(ids))
    assert dec.stopped_by == "\nUser:"
    assert not any("\ufffd" in d for d in deltas)


def test_held_back_text_is_released_when_it_is_not_a_stop():
    ids = TOK.encode(" A\nUsual day.\n")
    dec = ReplyDecoder(TOK, STOPS)
    shown = []
    for i in ids:
        shown.append(dec.emitted + "|" + dec.push(i))
    assert dec.close() == ""   # the trailing "\n" is whitespace: the reply ends at "."
    assert dec.reply == "A\nUsual day."
    assert dec.stopped_by is None and not dec.done
    # While "\nUs" could still be "\nUser:", the shown text stayed "A".
    assert [s.split("|")[0] for s in shown][:4] == ["", "A", "A", "A"]


def test_emoji_split_over_several_tokens_arrives_whole():
    # the four bytes of U+1F642 as four single-byte tokens, then the end token
    byte_tokens = [TOK.tok.token_to_id(c) for c in "ðŁĻĤ"]   # GPT-2's byte-to-unicode names of F0 9F 99 82
    assert TOK.decode(byte_tokens) == "\U0001F642"
    s = ChatSession(ScriptedModel(TOK.encode(" Hi") + byte_tokens + [EOS]), TOK, DEFAULT_TEMPLATE, GREEDY)
    deltas = list(s.stream("hello"))
    assert deltas == ["Hi", "\U0001F642"]    # one delta for four tokens, none with U+FFFD
    assert s.last.stop_reason == "end_token" and len(s.last.token_ids) == 6


# --- ChatSession: stops ------------------------------------------------------------------------
def test_stops_on_end_token_and_keeps_history():
    s = scripted_session(" Paris.")
    assert s.send("What is the capital of France?") == "Paris."
    assert s.last.stop_reason == "end_token"
    assert s.last.token_ids == TOK.encode(" Paris.") + [EOS]
    assert s.model.steps == 2                               # 3 tokens: prefill + 2 steps, then stopped
    assert s.history == [{"role": "user", "content": "What is the capital of France?"},
                         {"role": "assistant", "content": "Paris."}]
    assert s.model.prompts[0] == [DEFAULT_TEMPLATE.prompt_ids(s.history[:1], TOK)]


def test_stops_on_next_user_turn_and_trims_it():
    s = scripted_session(" Paris.\nUser: and now I talk for the user", end=False)
    assert s.send("Capital of France?") == "Paris."
    assert s.last.stop_reason == "stop_string"
    n = len(TOK.encode(" Paris.\nUser:"))
    assert len(s.last.token_ids) == n and s.model.steps == n - 1   # generation stopped right there


# The end token and the turn marker win by a small margin: 2.0 against a runner-up at 1.9, so a
# penalty of 1.1 on them (2.0 / 1.1 = 1.82) or a ban would hand the argmax to the runner-up.
CLOSE = dict(top=2.0, runner_up=(TOK.encode(" banana")[0], 1.9))
CONTROLS = [dict(repetition_penalty=1.1), dict(repetition_penalty=2.0), dict(no_repeat_ngram_size=2),
            dict(no_repeat_ngram_size=3), dict(repetition_penalty=1.3, no_repeat_ngram_size=2)]


@pytest.mark.parametrize("controls", CONTROLS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_anti_repetition_controls_never_stop_a_later_turn_from_ending(controls):
    # Turn 2's prompt holds turn 1's " Paris." + end token + "\nUser:": penalising or banning what
    # the prompt holds would forbid ("." end) and push the end token below the runner-up.
    s = scripted_session(" Paris.", settings=GREEDY.replace(max_new_tokens=12, **controls), **CLOSE)
    for turn in range(3):   # the scripted model starts its script again at every prefill
        assert s.send(f"Capital of France? ({turn})") == "Paris."
        assert s.last.stop_reason == "end_token" and s.last.token_ids == TOK.encode(" Paris.") + [EOS]


@pytest.mark.parametrize("controls", CONTROLS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_a_base_model_can_still_open_the_next_turn_with_controls_on(controls):
    # A base model stops by writing "\nUser:". This reply already used "\n" once, and earlier turns
    # hold "\nUser:" in the prompt: the marker's tokens are exempt, so it still ends there.
    s = scripted_session(" Hi\nthere\nUser: more", end=False,
                         settings=GREEDY.replace(max_new_tokens=16, **controls), **CLOSE)
    for turn in range(2):
        assert s.send(f"hello {turn}") == "Hi\nthere"
        assert s.last.stop_reason == "stop_string"


def test_the_chat_defaults_never_give_an_empty_reply_by_the_end_token_alone():
    # The demo fine-tune puts ~9% on the end token as the first reply token (16% after T=0.7, top-k,
    # top-p): here it is the argmax, " Paris" a close second. The chat's min_new_tokens=1 skips it;
    # evaluation (min_new_tokens=0) still sees the empty reply the model would give.
    from mambaft.evaluate.replies import eval_replies
    model = ScriptedModel([EOS, *TOK.encode("."), EOS], top=2.0, runner_up=(TOK.encode(" Paris")[0], 1.9),
                          max_seq_len=256)
    s = ChatSession(model, TOK, DEFAULT_TEMPLATE, ChatSettings(temperature=0.0))
    assert ChatSettings().min_new_tokens == 1
    assert s.send("What is the capital of France?") == "Paris."
    assert s.last.stop_reason == "end_token" and s.last.note == ""
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    r = eval_replies(model, TOK, DEFAULT_TEMPLATE, [msgs])[0]
    assert r.answer == "" and r.stopped_by == "end_token" and r.new_ids == []


def test_max_new_tokens_bounds_the_reply():
    s = scripted_session(" one two three four five six seven", end=False,
                         settings=GREEDY.replace(max_new_tokens=4))
    assert s.send("count") == "one two three four"
    assert s.last.stop_reason == "max_new_tokens" and len(s.last.token_ids) == 4


def test_stream_deltas_join_to_the_sent_reply():
    text = " Voilà: ça coûte 5 €, d'accord?"
    deltas = list(scripted_session(text).stream("prix?"))
    assert "".join(deltas) == scripted_session(text).send("prix?") == text.strip()
    assert len(deltas) >= 8 and not any("\ufffd" in d for d in deltas)


def test_closing_the_stream_early_cancels_generation():
    s = scripted_session(" word" * 400, end=False, settings=GREEDY.replace(max_new_tokens=400),
                         max_seq_len=1024, step_delay=0.005)
    it = s.stream("talk")
    assert next(it) == "word"
    it.close()                                   # consumer leaves: the worker must stop soon
    assert s.last.stop_reason == "cancelled"
    assert s.model.steps < 200                   # 400 x 5 ms = 2 s if it had run to the end
    assert s.history[-1]["content"].startswith("word")


def test_errors_in_the_worker_reach_the_consumer():
    s = scripted_session(" x")
    with pytest.raises(ValueError, match="non-empty"):
        list(s.stream("   "))


# --- history within max_seq_len ----------------------------------------------------------------
def test_history_drops_whole_oldest_turns_to_fit():
    s = scripted_session(" Sure, here is a fine answer.", max_seq_len=64,
                         settings=GREEDY.replace(max_new_tokens=16))      # budget 64 - 16 = 48
    budget = 48
    turns = []
    for i in range(6):
        msg = f"question number {i} about things"
        s.send(msg)
        prompt = s.model.prompts[-1][0]
        # expected: the longest suffix of whole earlier turns whose prompt fits the budget
        for keep in range(len(turns), -1, -1):
            kept = [m for t in turns[len(turns) - keep:] for m in t]
            want = DEFAULT_TEMPLATE.prompt_ids(kept + [{"role": "user", "content": msg}], TOK)
            if len(want) <= budget:
                break
        assert prompt == want and len(prompt) <= budget
        assert s.last.context.kept_turns == keep
        assert s.last.context.dropped_turns == len(turns) - keep
        assert TOK.decode(prompt).startswith("User: ")       # never half a turn
        turns = turns[len(turns) - keep:] + [[{"role": "user", "content": msg},
                                              {"role": "assistant", "content": "Sure, here is a fine answer."}]]
        assert s.history == [m for t in turns for m in t]
    assert s.dropped_turns >= 3 and s.last.context.kept_turns >= 1
    # the original architecture only uses the last 19 of those tokens, and says so
    assert s.last.context.receptive_field == 19 and s.last.context.usable_tokens == 19
    assert "last 19" in s.last.context.note()


def test_a_message_longer_than_the_budget_is_cropped_from_the_front():
    s = scripted_session(" ok", max_seq_len=64, settings=GREEDY.replace(max_new_tokens=16))
    s.send("short first")
    long = " ".join(f"w{i}" for i in range(60))
    full = DEFAULT_TEMPLATE.prompt_ids([{"role": "user", "content": long}], TOK)
    assert s.send(long) == "ok"
    assert s.model.prompts[-1][0] == full[-48:]            # ends with "Assistant:" as always
    assert s.last.context.cropped_tokens == len(full) - 48 and s.last.context.dropped_turns == 1
    assert [m["role"] for m in s.history] == ["user", "assistant"]


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="top_p"):
        ChatSettings(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        ChatSettings(temperature=-1)
    with pytest.raises(ValueError, match="unknown setting"):
        GREEDY.replace(temprature=0.5)
    s = scripted_session(" x", max_seq_len=64, settings=GREEDY.replace(max_new_tokens=64))
    with pytest.raises(ValueError, match="max_seq_len=64"):
        s.send("hi")


def test_selective_architecture_reports_no_receptive_field_limit():
    s = scripted_session(" fine", architecture="selective")
    s.send("a fairly long message that has more than nineteen tokens in it, surely, yes indeed")
    assert s.last.context.receptive_field is None
    assert s.last.context.usable_tokens == s.last.context.prompt_tokens > 19
    assert "receptive field" not in s.last.context.note()


def test_reset_forgets_everything():
    s = scripted_session(" yes")
    s.send("a")
    s.send("b")
    s.reset()
    assert s.history == [] and s.turns == 0 and s.last is None
    s.send("c")
    assert s.model.prompts[-1][0] == DEFAULT_TEMPLATE.prompt_ids([{"role": "user", "content": "c"}], TOK)


def test_system_message_is_kept_in_every_prompt():
    s = scripted_session(" yes", settings=GREEDY.replace(system="Be brief."))
    s.send("a")
    assert TOK.decode(s.model.prompts[-1][0]) == "System: Be brief.\nUser: a\nAssistant:"


# --- a real (small, random) MambaSWELU -------------------------------------------------------------
@pytest.fixture(scope="module")
def small_session_model():
    from conftest import make_small_gpt2_model
    return make_small_gpt2_model()


def test_session_equals_a_direct_generate_call(small_session_model):
    settings = ChatSettings(temperature=0.0, repetition_penalty=1.1, no_repeat_ngram_size=3,
                            max_new_tokens=24)
    s = ChatSession(small_session_model, TOK, DEFAULT_TEMPLATE, settings)
    reply = s.send("Hello, who are you?")
    ids = DEFAULT_TEMPLATE.prompt_ids([{"role": "user", "content": "Hello, who are you?"}], TOK)
    out = generate(small_session_model, [ids], 24, temperature=0.0, repetition_penalty=1.1,
                   no_repeat_ngram_size=3, stop_token_ids=[EOS])[0][len(ids):]
    assert s.last.token_ids == out[:len(s.last.token_ids)]
    assert reply == DEFAULT_TEMPLATE.clean_reply(TOK.decode([t for t in out if t != EOS]))
    assert small_session_model.training is False          # eval mode: dropout off


def test_seed_makes_sampled_chats_reproducible(small_session_model):
    hot = ChatSettings(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=6, seed=7)

    def chat(settings, turns=2):
        s = ChatSession(small_session_model, TOK, DEFAULT_TEMPLATE, settings)
        return [s.send("hi") for _ in range(turns)], s

    (a1, a2), s = chat(hot)
    (b1, b2), _ = chat(hot)
    (c1,), _ = chat(hot.replace(seed=8), turns=1)
    assert (a1, a2) == (b1, b2)
    assert a1 != a2                      # turn t samples with seed + t: the same question, a new draw
    assert c1 != a1
    s.reset()
    assert s.send("hi") == a1


# --- answer table ----------------------------------------------------------------------------------
def test_answer_table_batches_prompts_and_renders_text_and_html():
    base = ScriptedModel(TOK.encode(" I like <b>cheese</b>\nUser: more"))
    tuned = ScriptedModel(TOK.encode(" Paris.") + [EOS])
    prompts = ["Capital of France?", "Is 1 < 2?"]
    table = answer_table({"base": ChatSession(base, TOK, DEFAULT_TEMPLATE, name="base"),
                          "tuned": ChatSession(tuned, TOK, DEFAULT_TEMPLATE, name="tuned")},
                         prompts, GREEDY)
    assert isinstance(table, AnswerTable)
    assert len(base.prompts) == 1 and len(base.prompts[0]) == 2     # one batched call per model
    assert table.answer(0, "base") == table.answer(1, "base") == "I like <b>cheese</b>"
    assert table.answer(1, "tuned") == "Paris."
    rec = table.records()
    assert rec[0]["tuned"] == {"answer": "Paris.", "tokens": 3, "stop": "end_token"}
    assert rec[0]["base"]["stop"] == "stop_string"
    text = str(table)
    assert "[2] User: Is 1 < 2?" in text and "tuned | Paris." in text
    html = table._repr_html_()
    assert "&lt;b&gt;cheese&lt;/b&gt;" in html and "<b>cheese" not in html and "1 &lt; 2" in html


def test_answer_table_loads_checkpoints_by_path(small_gpt2_folder):
    settings = ChatSettings(temperature=0.0, max_new_tokens=10)
    table = answer_table({"small": small_gpt2_folder}, ["Hello", "Bonjour, ça va ?"], settings)
    one = ChatSession.load(small_gpt2_folder, settings)
    for i, p in enumerate(["Hello", "Bonjour, ça va ?"]):
        one.reset()
        assert table.answer(i, "small") == one.send(p)
    with pytest.raises(TypeError, match="checkpoint path"):
        answer_table({"x": 42}, ["hi"])
