"""An inline chat for the notebooks: a thin ipywidgets layer over `ChatSession`.

    from mambaft.chat.widgets import chat_widget
    chat_widget("outputs/run/final")                       # one model
    chat_widget("outputs/run/final", compare="base.pt")    # + a side-by-side toggle: base vs fine-tuned
    chat_widget(tuned, compare=base, transcript=table)     # + what a saved notebook shows without a kernel

Enter sends, Shift+Enter starts a new line (the message box is a small anywidget: ipywidgets'
Textarea cannot tell the two apart). Replies are generated on a worker thread, so the kernel keeps
reading widget messages while a reply streams: Stop sets a flag that generation checks between
tokens, which works on whatever thread the kernel runs the button handler (a subshell thread too,
where Kernel > Interrupt never arrives). While a reply streams, Send and Clear are disabled; `on_clear`
called anyway stops the reply first and waits for it, so a finished reply can never bring back what
Clear removed.

Everything goes through plain methods that tests call without a browser: `on_send` / `on_stop` /
`on_clear` are the button handlers, `wait()` joins the reply thread, `render_transcript` builds the HTML
of a pane. tests/test_chat_browser.py drives the same widget in JupyterLab in headless Chromium.
"""
from __future__ import annotations

import html
import threading
from typing import Optional

import anywidget
import ipywidgets as W
import traitlets

from mambaft.chat.answers import AnswerTable, ModelSpec, as_session
from mambaft.chat.session import ChatSession, ChatSettings

NO_KERNEL_LINE = "Run the notebook to chat: the live chat needs a running kernel."
PANE_MAX_HEIGHT = "22em"   # about 14 lines of reply text: the message box stays in view below two panes

# Sliders show their whole description: ipywidgets' default label box is 80 px ("temperat...").
_LABEL = {"style": {"description_width": "initial"}, "layout": W.Layout(width="auto", min_width="22em")}

# (setting, widget factory): one slider per sampling control of ChatSettings.
_SLIDERS = {
    "temperature": lambda v: W.FloatSlider(value=v, min=0.0, max=2.0, step=0.05, description="temperature",
                                           **_LABEL),
    "top_k": lambda v: W.IntSlider(value=v, min=0, max=200, step=1, description="top-k (0 off)", **_LABEL),
    "top_p": lambda v: W.FloatSlider(value=v, min=0.05, max=1.0, step=0.05, description="top-p", **_LABEL),
    "repetition_penalty": lambda v: W.FloatSlider(value=v, min=1.0, max=2.0, step=0.05,
                                                  description="repetition penalty", **_LABEL),
    "no_repeat_ngram_size": lambda v: W.IntSlider(value=v, min=0, max=8, step=1,
                                                  description="no-repeat n-gram (0 off)", **_LABEL),
    "max_new_tokens": lambda v: W.IntSlider(value=v, min=1, max=512, step=1, description="max new tokens",
                                            **_LABEL),
    "min_new_tokens": lambda v: W.IntSlider(value=v, min=0, max=32, step=1,
                                            description="min new tokens (end token not before)", **_LABEL),
    "seed": lambda v: W.IntText(value=0 if v is None else v, description="seed", **_LABEL),
}

_INPUT_ESM = """
function render({ model, el }) {
  const row = document.createElement("div");
  row.style.cssText = "display:flex;gap:6px;align-items:flex-start;width:100%";
  const box = document.createElement("textarea");
  box.className = "mambaft-chat-input";
  box.rows = 2;
  box.placeholder = model.get("placeholder");
  box.value = model.get("value");
  box.style.cssText = "flex:1;box-sizing:border-box;resize:vertical;font:inherit;padding:4px";
  // JupyterLab's notebook shortcuts (Shift+Enter runs the cell) must not see keys typed here.
  box.setAttribute("data-lm-suppress-shortcuts", "true");
  const send = document.createElement("button");
  send.textContent = "Send";
  send.className = "jupyter-widgets jupyter-button widget-button mod-primary mambaft-chat-send";
  send.disabled = model.get("disabled");
  // The text travels inside the submit message: widget state updates are throttled and may reach
  // the kernel after a custom message, so the kernel's copy of "value" can lag behind the box.
  const submit = () => {
    const text = box.value;
    if (model.get("disabled") || !text.trim()) return;
    box.value = "";
    model.set("value", "");
    model.save_changes();
    model.send({ event: "submit", value: text });
  };
  box.addEventListener("input", () => { model.set("value", box.value); model.save_changes(); });
  box.addEventListener("keydown", (e) => {
    e.stopPropagation();
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {   // Shift+Enter: the textarea's newline
      e.preventDefault();
      submit();
    }
  });
  send.addEventListener("click", submit);
  model.on("change:value", () => { if (box.value !== model.get("value")) box.value = model.get("value"); });
  model.on("change:disabled", () => { send.disabled = model.get("disabled"); });
  row.append(box, send);
  el.appendChild(row);
}
export default { render };
"""


class MessageBox(anywidget.AnyWidget):
    """A multi-line text box with its Send button: Enter or the button submits the text, Shift+Enter
    adds a newline. `disabled` disables submitting (the box stays editable for the next message)."""
    _esm = traitlets.Unicode(_INPUT_ESM).tag(sync=True)
    value = traitlets.Unicode("").tag(sync=True)
    placeholder = traitlets.Unicode("").tag(sync=True)
    disabled = traitlets.Bool(False).tag(sync=True)

    def __init__(self, **kw):
        super().__init__(**kw)
        self._submit_handlers = []
        self.on_msg(self._on_custom_msg)

    def on_submit(self, callback) -> None:
        """callback(text) when the user presses Enter or Send."""
        self._submit_handlers.append(callback)

    def click(self) -> None:
        """Submit the current text, as the Send button does (tests)."""
        if not self.disabled:
            self._submit(self.value)

    def _submit(self, text: str) -> None:
        for cb in self._submit_handlers:
            cb(text)

    def _on_custom_msg(self, _widget, content, _buffers) -> None:
        if isinstance(content, dict) and content.get("event") == "submit" and not self.disabled:
            self._submit(str(content.get("value", "")))


def render_transcript(history: list, pending: Optional[str] = None, title: str = "") -> str:
    """Messages (+ the reply being streamed) -> HTML. All text is escaped.

    The messages sit in a box of at most PANE_MAX_HEIGHT that scrolls; `column-reverse` anchors its
    scroll position at the bottom, so the newest line stays in view as a reply grows (no script)."""
    parts = []
    msgs = list(history) + ([{"role": "assistant", "content": pending + " \u258c"}] if pending is not None else [])
    for m in msgs:
        who = {"user": "You", "assistant": "Assistant", "system": "System"}.get(m["role"], m["role"])
        bg = "#e8f0fe" if m["role"] == "user" else "#f4f4f4"
        note = (" " if m["content"] else "") + f"<i style='color:#a15c00'>{html.escape(m['note'])}</i>" \
            if m.get("note") else ""
        parts.append(f"<div style='background:{bg};padding:4px 8px;margin:3px 0;border-radius:6px;"
                     f"white-space:pre-wrap;line-height:1.4'><b>{who}:</b> {html.escape(m['content'])}{note}</div>")
    if not msgs:
        parts.append("<div style='color:#888'>(no messages yet)</div>")
    head = f"<div style='font-weight:bold;margin-bottom:4px'>{html.escape(title)}</div>" if title else ""
    return (f"{head}<div class='mambaft-pane' style='max-height:{PANE_MAX_HEIGHT};overflow-y:auto;"
            f"display:flex;flex-direction:column-reverse'><div>{''.join(parts)}</div></div>")


class ChatWidget:
    """Message box, Send / Stop / Clear, sampling sliders, one transcript pane per model, a status line.

    Attributes tests use: `input`, `send_button`, `stop_button`, `clear_button`, `side_by_side`,
    `sliders`, `panes` (one HTML per session), `status`, `sessions`, `busy`.
    `background=False` answers on the calling thread (then Stop cannot interrupt a reply).
    """

    def __init__(self, sessions: list, settings: ChatSettings, transcript: Optional[AnswerTable] = None,
                 background: bool = True):
        self.sessions = sessions
        self.settings = settings
        self.transcript = transcript
        self.background = background
        for s in sessions:
            s.settings = settings
        self.input = MessageBox(placeholder="Type a message: Enter sends, Shift+Enter adds a line",
                                layout=W.Layout(width="70%"))
        self.send_button = self.input          # the box's own Send button (see MessageBox)
        self.stop_button = W.Button(description="Stop", button_style="warning", disabled=True,
                                    tooltip="end the reply being written (keeps what it wrote)")
        self.clear_button = W.Button(description="Clear", tooltip="forget both conversations")
        self.side_by_side = W.Checkbox(value=len(sessions) > 1, description=self._compare_label(),
                                       disabled=len(sessions) < 2, indent=False,
                                       style={"description_width": "initial"}, layout=W.Layout(width="auto"))
        self.panes = [W.HTML(render_transcript([], title=s.name),
                             layout=W.Layout(width="50%" if len(sessions) > 1 else "100%"))
                      for s in sessions]
        self.status = W.HTML("")
        self.status.add_class("mambaft-chat-status")     # CSS hooks: the browser test finds them
        for pane in self.panes:
            pane.add_class("mambaft-chat-pane")
        self.sliders = {k: make(getattr(settings, k)) for k, make in _SLIDERS.items()}
        for slider in self.sliders.values():
            slider.observe(self.on_setting, names="value")
        self.input.on_submit(self.send)
        self.stop_button.on_click(self.on_stop)
        self.clear_button.on_click(self.on_clear)
        self.side_by_side.observe(self._on_layout, names="value")
        self.row = W.HBox(self._visible_panes())
        controls = W.Accordion(children=[W.VBox(list(self.sliders.values()))], titles=("Sampling",))
        self.box = W.VBox([self.row, self.status,
                           W.HBox([self.input, self.stop_button, self.clear_button]),
                           self.side_by_side, controls])
        self.busy = False
        self._cancel = threading.Event()
        self._worker: Optional[threading.Thread] = None
        self._lock = threading.Lock()   # one reply at a time, whichever thread clicks

    def _compare_label(self) -> str:
        if len(self.sessions) < 2:
            return "side by side (needs a second model)"
        return f"side by side: {self.sessions[0].name} vs {self.sessions[1].name}"

    @property
    def active(self) -> list:
        """The sessions answering the next message."""
        return self.sessions if self.side_by_side.value else self.sessions[:1]

    def _visible_panes(self) -> list:
        panes = self.panes if self.side_by_side.value else self.panes[:1]
        for p in panes:
            p.layout.width = f"{100 // len(panes)}%"
        return panes

    def _on_layout(self, _change=None) -> None:
        self.row.children = self._visible_panes()

    def _set_busy(self, busy: bool) -> None:
        self.busy = busy
        self.send_button.disabled = self.clear_button.disabled = self.side_by_side.disabled = busy
        if not busy and len(self.sessions) < 2:
            self.side_by_side.disabled = True
        self.stop_button.disabled = not busy

    # --- handlers (plain methods: tests call them) ------------------------------------------------
    def on_setting(self, change) -> None:
        name = next(k for k, w in self.sliders.items() if w is change["owner"])
        try:
            self.settings = self.settings.replace(**{name: change["new"]})
        except ValueError as e:
            self.status.value = f"<span style='color:#b00'>{html.escape(str(e))}</span>"
            return
        for s in self.sessions:
            s.settings = self.settings

    def on_send(self, _source=None) -> None:
        """Send the message box's text (what its Send button does)."""
        self.send(self.input.value)

    def send(self, text: str) -> None:
        """Send `text` to the active models; returns at once when `background`."""
        text = text.strip()
        with self._lock:
            if not text or self.busy:
                return
            self._set_busy(True)
            self._cancel = threading.Event()
        if self.input.value.strip() == text:   # (the browser clears its box itself on Enter / Send)
            self.input.value = ""
        self.status.value = "writing\u2026"
        if self.background:
            self._worker = threading.Thread(target=self._answer, args=(text, self._cancel),
                                            name="mambaft-chat-reply", daemon=True)
            self._worker.start()
        else:
            self._answer(text, self._cancel)

    def on_stop(self, _button=None) -> None:
        """End the reply being written after its current token; it stays in the pane, marked stopped."""
        if self.busy:
            self._cancel.set()
            self.status.value = "stopping\u2026"

    def on_clear(self, _button=None) -> None:
        """Forget every conversation. A reply still streaming is stopped and waited for first."""
        self._cancel.set()
        self.wait()
        for s, pane in zip(self.sessions, self.panes):
            s.reset()
            pane.value = render_transcript([], title=s.name)
        self.status.value = ""
        self.input.value = ""

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait for the reply thread (if any); True when no reply is running any more."""
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)
            return not worker.is_alive()
        return True

    def _answer(self, text: str, cancel: threading.Event) -> None:
        lines = []
        try:
            for session in self.active:   # one after the other: two models would share 2 CPU cores
                if cancel.is_set():
                    lines.append(f"<b>{html.escape(session.name)}</b>: not asked (stopped)")
                    continue
                pane = self.panes[self.sessions.index(session)]
                shown = session.history + [{"role": "user", "content": text}]
                streamed = []

                def show(delta: str, pane=pane, shown=shown, streamed=streamed, name=session.name) -> None:
                    streamed.append(delta)
                    pane.value = render_transcript(shown, "".join(streamed), title=name)

                self.status.value = f"writing\u2026 ({html.escape(session.name)})"
                show("")
                try:
                    session.send(text, on_delta=show, cancel=cancel)
                except Exception as e:  # shown in the widget: a notebook callback has nowhere to raise
                    lines.append(f"<span style='color:#b00'>{html.escape(f'{type(e).__name__}: {e}')}</span>")
                    pane.value = render_transcript(session.history, title=session.name)
                    break
                pane.value = render_transcript(session.history, title=session.name)
                r = session.last
                lines.append(f"<b>{html.escape(session.name)}</b>: {html.escape(r.stats())}; "
                             f"{html.escape(r.context.note())}")
        finally:
            self.status.value = "<br>".join(lines)
            with self._lock:
                self._set_busy(False)

    # --- display ----------------------------------------------------------------------------------
    def static_bundle(self) -> dict:
        """What a notebook saved without a kernel can still show: the transcript and one line."""
        names = " vs ".join(s.name for s in self.sessions)
        text = f"Chat with {names}. {NO_KERNEL_LINE}"
        if self.transcript is None:
            return {"text/plain": text, "text/html": f"<p><i>{html.escape(text)}</i></p>"}
        return {"text/plain": f"{self.transcript}\n\n{text}",
                "text/html": f"{self.transcript.to_html()}<p><i>{html.escape(text)}</i></p>"}

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.box._repr_mimebundle_(**kwargs)
        # Untrusted or widget-less front ends fall back to text/plain: say what this is, not "VBox(...)".
        bundle["text/plain"] = self.static_bundle()["text/plain"].splitlines()[-1]
        return bundle

    def _ipython_display_(self):
        from IPython.display import display
        # Two outputs: the static one survives in a saved notebook whatever becomes of the widget.
        display(self.static_bundle(), raw=True)
        display(self._repr_mimebundle_(), raw=True)


def chat_widget(model: ModelSpec, compare: Optional[ModelSpec] = None, *,
                settings: Optional[ChatSettings] = None, names: tuple = ("fine-tuned", "base"),
                side_by_side: Optional[bool] = None, transcript: Optional[AnswerTable] = None,
                background: bool = True) -> ChatWidget:
    """A chat widget over `model` (a ChatSession, a checkpoint path or a (model, info) pair);
    with `compare`, a side-by-side mode where both answer the same message (on by default).
    `transcript` (an `answer_table`) is shown above the widget, and is what a saved notebook keeps."""
    settings = settings or ChatSettings()
    def name_of(spec, default):
        return spec.name if isinstance(spec, ChatSession) else default

    sessions = [as_session(model, settings, name=name_of(model, names[0]))]
    if compare is not None:
        sessions.append(as_session(compare, settings, name=name_of(compare, names[1])))
    w = ChatWidget(sessions, settings, transcript=transcript, background=background)
    if side_by_side is not None and len(sessions) > 1:
        w.side_by_side.value = bool(side_by_side)
    return w
