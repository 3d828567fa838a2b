"""The chat's two faces: the ipywidgets chat (handlers driven without a browser, what it displays)
and the terminal chat (fed through stdin). Scripted models (see test_chat.py) force exact replies."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mambaft.chat import ChatSession, ChatSettings
from mambaft.chat.terminal import run_chat
from mambaft.chat.widgets import NO_KERNEL_LINE, chat_widget, render_transcript
from mambaft.cli.chat import main as terminal_main
from mambaft.template import DEFAULT_TEMPLATE
from test_chat import EOS, GREEDY, TOK, ScriptedModel

ROOT = Path(__file__).resolve().parents[1]


def session(reply: str, name: str, end: bool = True, **kw) -> ChatSession:
    model = ScriptedModel(TOK.encode(reply) + ([EOS] if end else []), **kw)
    return ChatSession(model, TOK, DEFAULT_TEMPLATE, GREEDY, name=name)


# --- widget --------------------------------------------------------------------------------------
def test_send_streams_the_reply_into_the_pane():
    w = chat_widget(session(" Paris is the capital.", "tuned"), settings=GREEDY)
    seen = []
    w.panes[0].observe(lambda ch: seen.append(ch["new"]), names="value")
    w.input.value = "Capital of France?"
    w.send_button.click()
    assert w.wait(10)
    final = w.panes[0].value
    assert "<b>You:</b> Capital of France?" in final and "<b>Assistant:</b> Paris is the capital.</div>" in final
    # streamed: the growing reply (with a cursor) once per token that added text, then the final pane
    partial = [v.split("<b>Assistant:</b> ")[1].split(" \u258c")[0] for v in seen[:-1]]
    assert partial == ["", "Paris", "Paris is", "Paris is the", "Paris is the capital", "Paris is the capital."]
    assert w.input.value == "" and not w.send_button.disabled
    assert "6 tokens" in w.status.value and "stopped: end token" in w.status.value
    assert w.sessions[0].history[-1] == {"role": "assistant", "content": "Paris is the capital."}


def test_side_by_side_answers_the_same_message_with_both_models():
    tuned, base = session(" Paris.", "tuned"), session(" I like trains\nUser: me too", "base", end=False)
    w = chat_widget(tuned, compare=base, settings=GREEDY)
    assert w.side_by_side.value and len(w.row.children) == 2
    w.input.value = "Capital of France?"
    w.on_send()
    assert w.wait(10)
    assert "Paris.</div>" in w.panes[0].value and "I like trains</div>" in w.panes[1].value
    assert "stopped: end token" in w.status.value and "stopped: stop string" in w.status.value
    # both saw the same prompt
    assert tuned.model.prompts[0] == base.model.prompts[0]
    # side by side off: one pane, only the first model answers
    w.side_by_side.value = False
    assert list(w.row.children) == [w.panes[0]]
    w.input.value = "Again?"
    w.on_send()
    assert w.wait(10)
    assert len(tuned.history) == 4 and len(base.history) == 2
    assert "Again?" in w.panes[0].value and "Again?" not in w.panes[1].value


def test_sliders_change_the_sampling_of_every_session():
    a, b = session(" one two three four five", "a", end=False), session(" x y z", "b", end=False)
    w = chat_widget(a, compare=b, settings=GREEDY)
    w.sliders["max_new_tokens"].value = 2
    w.sliders["repetition_penalty"].value = 1.3
    assert a.settings.max_new_tokens == b.settings.max_new_tokens == 2
    assert a.settings.repetition_penalty == pytest.approx(1.3)   # parsed from text: the float 1.3 itself
    w.input.value = "count"
    w.on_send()
    assert w.wait(10)
    assert a.last.text == "one two" and a.last.stop_reason == "max_new_tokens"
    assert b.last.text == "x y" and len(b.last.token_ids) == 2


def test_errors_show_in_the_widget_instead_of_raising():
    w = chat_widget(session(" ok", "m", max_seq_len=64), settings=GREEDY)
    w.sliders["max_new_tokens"].value = 64          # no room left for the prompt in 64 positions
    w.input.value = "hi"
    w.on_send()
    assert w.wait(10)
    assert "max_seq_len=64" in w.status.value and not w.send_button.disabled
    assert w.sessions[0].history == []


def test_clear_resets_sessions_and_panes_and_text_is_escaped():
    w = chat_widget(session(" <i>fine</i>", "m"), settings=GREEDY)
    w.input.value = "<script>alert(1)</script>"
    w.on_send()
    assert w.wait(10)
    assert "&lt;script&gt;" in w.panes[0].value and "<script>" not in w.panes[0].value
    assert "&lt;i&gt;fine&lt;/i&gt;" in w.panes[0].value
    w.on_clear()
    assert w.sessions[0].history == [] and "(no messages yet)" in w.panes[0].value and w.status.value == ""
    assert render_transcript([]) == w.panes[0].value.replace(
        "<div style='font-weight:bold;margin-bottom:4px'>m</div>", "")


def test_empty_message_does_nothing():
    s = session(" ok", "m")
    w = chat_widget(s, settings=GREEDY)
    w.input.value = "   "
    w.on_send()
    assert w.wait(10)
    assert s.model.prompts == [] and s.history == []


def slow_session(name: str, n: int = 400, delay: float = 0.01) -> ChatSession:
    model = ScriptedModel(TOK.encode(" word" * n), max_seq_len=1024, step_delay=delay)
    return ChatSession(model, TOK, DEFAULT_TEMPLATE, GREEDY.replace(max_new_tokens=n), name=name)


def wait_for(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_stop_ends_the_reply_within_one_token_and_keeps_it_marked_stopped():
    s = slow_session("m")
    w = chat_widget(s, settings=s.settings)
    w.input.value = "talk"
    w.send_button.click()                       # returns at once: the reply streams on a thread
    assert w.busy and w.send_button.disabled and w.clear_button.disabled and not w.stop_button.disabled
    wait_for(lambda: "word word" in w.panes[0].value)
    steps = s.model.steps                       # decode steps started so far
    w.stop_button.click()                       # a flag: works from any thread, no KeyboardInterrupt
    assert w.wait(5)
    assert s.model.steps <= steps + 1           # the step under way finishes; no other starts
    assert s.last.stop_reason == "cancelled" and 2 <= len(s.last.token_ids) < 400
    partial = " ".join(["word"] * len(s.last.token_ids))
    assert s.history[-1] == {"role": "assistant", "content": partial, "note": "[stopped]"}
    assert f"{partial} <i style='color:#a15c00'>[stopped]</i>" in w.panes[0].value
    assert "\u258c" not in w.panes[0].value         # no cursor left behind
    assert "stopped: cancelled" in w.status.value and "writing" not in w.status.value
    assert not (w.busy or w.send_button.disabled or w.clear_button.disabled) and w.stop_button.disabled
    w.input.value = "again"                     # and the chat goes on
    w.send_button.click()
    wait_for(lambda: "again" in w.panes[0].value)
    w.on_stop()
    assert w.wait(5) and len(s.history) == 4


def test_status_says_writing_while_a_reply_streams():
    w = chat_widget(session(" Paris.", "m"), settings=GREEDY)
    w.input.value = "first"
    w.on_send()
    assert w.wait(5) and "stopped: end token" in w.status.value
    seen = []
    w.status.observe(lambda ch: seen.append(ch["new"]), names="value")
    w.panes[0].observe(lambda ch: seen.append(("pane", w.status.value)), names="value")
    w.input.value = "second"
    w.on_send()
    assert w.wait(5)
    during = [status for item in seen if isinstance(item, tuple) for status in item[1:]]
    assert during and all(st.startswith("writing\u2026") for st in during)   # never the last turn's numbers
    assert "stopped: end token" in seen[-1]


def test_clear_during_a_reply_stops_it_and_is_not_undone():
    tuned, base = slow_session("tuned", delay=0.005), slow_session("base", delay=0.005)
    w = chat_widget(tuned, compare=base, settings=tuned.settings)
    w.input.value = "hello"
    w.on_send()
    wait_for(lambda: "word" in w.panes[0].value)
    w.on_clear()                                # the button is disabled now; the method still stops first
    assert not w.busy and w.wait(1)
    time.sleep(0.05)
    for sess, pane in zip((tuned, base), w.panes):
        assert sess.history == [] and "(no messages yet)" in pane.value and "word" not in pane.value
    assert base.model.prompts == []             # the stopped turn never reached the second model


def test_enter_in_the_message_box_sends():
    s = session(" Paris.", "m")
    w = chat_widget(s, settings=GREEDY)
    # what the browser sends on Enter (Shift+Enter stays a newline inside the text)
    w.input._handle_custom_msg({"event": "submit", "value": "Capital of\nFrance?"}, [])
    assert w.wait(5)
    assert s.history == [{"role": "user", "content": "Capital of\nFrance?"}, {"role": "assistant", "content": "Paris."}]
    assert w.input.value == ""


def test_an_empty_reply_says_so_everywhere():
    s = session("", "m")                         # the end token first, allowed with min_new_tokens=0
    w = chat_widget(s, settings=GREEDY.replace(min_new_tokens=0))
    w.input.value = "What is the capital of France?"
    w.on_send()
    assert w.wait(5)
    note = "(empty reply: the model emitted the end token first)"
    assert f"<b>Assistant:</b> <i style='color:#a15c00'>{note}</i>" in w.panes[0].value
    assert s.last.note == note and s.history[-1]["note"] == note
    out = io.StringIO()
    t = session("", "t")
    t.settings = GREEDY.replace(min_new_tokens=0)
    run_chat(t, io.StringIO("hi\n"), out, stats=False)
    assert f"Assistant: {note}\n" in out.getvalue()
    from mambaft.chat import answer_table
    table = answer_table({"m": session("", "a")}, ["hi"], GREEDY.replace(min_new_tokens=0))
    assert note in str(table) and note in table.to_html()


def test_layout_labels_whole_panes_scroll_and_a_saved_notebook_says_what_it_is():
    from mambaft.chat import answer_table
    tuned, base = session(" Paris.", "fine-tuned"), session(" Lyon.", "base")
    table = answer_table({"base": base, "fine-tuned": tuned}, ["Capital of France?"], GREEDY)
    w = chat_widget(tuned, compare=base, settings=GREEDY, transcript=table)
    assert all(sl.style.description_width == "initial" for sl in w.sliders.values())
    assert w.side_by_side.layout.width == "auto" and w.side_by_side.description == "side by side: fine-tuned vs base"
    assert "max-height:22em;overflow-y:auto" in w.panes[0].value
    bundle = w._repr_mimebundle_()
    assert bundle["text/plain"] == "Chat with fine-tuned vs base. " + NO_KERNEL_LINE   # not "VBox(children=..."
    static = w.static_bundle()
    assert static["text/plain"].startswith(str(table)) and "Paris." in static["text/html"]
    assert NO_KERNEL_LINE in static["text/html"]


# --- terminal ------------------------------------------------------------------------------------
def test_terminal_chat_from_stdin():
    s = session(" Paris.", "m")
    stdin = io.StringIO("Capital of France?\n/reset\nAnd Italy?\n/set temperature=0.5\n/set colour=3\n"
                        "/settings\n/quit\nnever read\n")
    out = io.StringIO()
    assert run_chat(s, stdin, out) == 2
    text = out.getvalue()
    assert text.count("Assistant: Paris.\n") == 2
    assert "(history cleared)" in text and "error: unknown setting 'colour'" in text
    assert s.settings.temperature == 0.5 and "temperature=0.5" in text
    # after /reset the second prompt holds only the new message; /quit stopped before "never read"
    assert s.model.prompts[1] == [DEFAULT_TEMPLATE.prompt_ids([{"role": "user", "content": "And Italy?"}], TOK)]
    assert len(s.model.prompts) == 2 and "never read" not in text
    assert "[3 tokens in" in text and "stopped: end token" in text


def test_terminal_ends_at_end_of_input_and_keeps_multi_turn_history():
    s = session(" Yes.", "m")
    out = io.StringIO()
    assert run_chat(s, io.StringIO("first\nsecond\n"), out, stats=False) == 2
    assert [m["content"] for m in s.history] == ["first", "Yes.", "second", "Yes."]
    assert "tokens in" not in out.getvalue() and out.getvalue().endswith("You: \n")


@pytest.mark.slow   # a fresh interpreter
def test_mambaft_chat_command_reads_stdin(small_gpt2_folder):
    settings = ChatSettings(temperature=0.0, max_new_tokens=8)
    expected = ChatSession.load(small_gpt2_folder, settings)
    want = [expected.send("Hello"), expected.send("Tell me more")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "mambaft", "chat", "--model", str(small_gpt2_folder),
                          "--temperature", "0", "--max-new-tokens", "8", "--no-stats"],
                         input="Hello\nTell me more\n/quit\n", capture_output=True, text=True, env=env,
                         timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert f"You: Hello\nAssistant: {want[0]}\nYou: Tell me more\nAssistant: {want[1]}\nYou: /quit" in res.stdout
    assert "chat template: user-assistant-v1" in res.stdout and "last 7 tokens" in res.stdout


def test_terminal_refuses_bad_flags_by_name(small_gpt2_folder, capsys):
    from mambaft.cli import main as mambaft_main      # as a user runs it: `mambaft chat ...`
    assert mambaft_main(["chat", "--model", str(small_gpt2_folder), "--top-p", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "mambaft chat: error:" in err and "top_p=1.5" in err and "Traceback" not in err
    missing = small_gpt2_folder.parent / "no_such_model"
    assert mambaft_main(["chat", "--model", str(missing)]) == 2
    assert f"{missing}: no such checkpoint" in capsys.readouterr().err


# --- headless notebook (papermill: widget state is not saved, text and PNG outputs are) ----------
@pytest.mark.slow   # runs a notebook
@pytest.mark.notebooks
def test_papermill_notebook_keeps_text_answers_and_the_final_plot(small_gpt2_folder, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    papermill = pytest.importorskip("papermill")
    from mambaft.chat import answer_table

    prompts = ["Hello?", "Capital of France?"]
    settings = ChatSettings(temperature=0.0, max_new_tokens=6)
    want = answer_table({"tuned": small_gpt2_folder}, prompts, settings)
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    writer = ("import json, sys, time\\nf = open(sys.argv[1], 'a')\\nfor s in range(1, 4):\\n"
              "    f.write(json.dumps({'step': s, 'loss': 1.0 / s}) + '\\\\n'); f.flush(); time.sleep(0.2)\\n")
    nb.cells = [
        nbformat.v4.new_code_cell("MODEL = ''\nOUT = ''", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import subprocess, sys\nfrom mambaft.chat import ChatSettings, answer_table\n"
            "from mambaft.chat.widgets import chat_widget\nfrom mambaft.plots import follow_metrics\n"
            "S = ChatSettings(temperature=0.0, max_new_tokens=6)"),
        nbformat.v4.new_code_cell("chat_widget(MODEL, settings=S, transcript=answer_table({'tuned': MODEL}, "
                                  f"{prompts!r}, S))"),
        nbformat.v4.new_code_cell(f"answer_table({{'tuned': MODEL}}, {prompts!r}, S)"),
        nbformat.v4.new_code_cell(
            f"p = subprocess.Popen([sys.executable, '-c', \"{writer}\", OUT + '/metrics.jsonl'])\n"
            "m = follow_metrics(OUT + '/metrics.jsonl', until=p, out_png=OUT + '/loss.png', interval=0.1)"),
    ]
    src, out = tmp_path / "chat.ipynb", tmp_path / "chat.out.ipynb"
    nbformat.write(nb, src)
    papermill.execute_notebook(str(src), str(out), parameters={"MODEL": str(small_gpt2_folder),
                               "OUT": str(tmp_path)}, kernel_name="python3", progress_bar=False, cwd=str(ROOT))
    cells = nbformat.read(out, 4).cells
    widget, table, follow = (c.outputs for c in cells[-3:])   # papermill adds a parameters cell
    # without a kernel the widget is dead: the first output says so and keeps the transcript
    assert widget[0]["data"]["text/plain"] == f"{want}\n\nChat with fine-tuned. {NO_KERNEL_LINE}"
    assert want.answer(1, "tuned") in widget[0]["data"]["text/html"] and NO_KERNEL_LINE in widget[0]["data"]["text/html"]
    assert "application/vnd.jupyter.widget-view+json" in widget[1]["data"]
    assert widget[1]["data"]["text/plain"] == f"Chat with fine-tuned. {NO_KERNEL_LINE}"   # untrusted: not "VBox(..."
    assert table[0]["data"]["text/plain"] == str(want)                         # ...but the table does
    assert want.answer(1, "tuned") and want.answer(1, "tuned") in table[0]["data"]["text/html"]
    texts = [o["data"]["text/plain"] for o in follow if "text/plain" in o.get("data", {})]
    assert "final: step 3 | loss 0.3333 (training process exited with code 0)" in texts
    assert any("image/png" in o.get("data", {}) for o in follow)
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
