"""An inline chat for the notebooks: a thin ipywidgets layer over `ChatSession`.

    from mambaft.chat.widgets import chat_widget
    chat_widget("outputs/run/final")                       # one model
    chat_widget("outputs/run/final", compare="base.pt")    # + a side-by-side toggle: base vs fine-tuned

Everything the widget does goes through plain functions and methods that tests call without a
browser: `on_send` / `on_clear` are the button handlers, `render_transcript` builds the HTML shown.
Under papermill the widget state is not saved; notebooks also print `answer_table(...)`.
"""
from __future__ import annotations

import html
from typing import Optional

import ipywidgets as W

from mambaft.chat.answers import ModelSpec, as_session
from mambaft.chat.session import ChatSession, ChatSettings

# (setting, widget factory): one slider per sampling control of ChatSettings.
_SLIDERS = {
    "temperature": lambda v: W.FloatSlider(value=v, min=0.0, max=2.0, step=0.05, description="temperature"),
    "top_k": lambda v: W.IntSlider(value=v, min=0, max=200, step=1, description="top-k (0 off)"),
    "top_p": lambda v: W.FloatSlider(value=v, min=0.05, max=1.0, step=0.05, description="top-p"),
    "repetition_penalty": lambda v: W.FloatSlider(value=v, min=1.0, max=2.0, step=0.05,
                                                  description="rep. penalty"),
    "no_repeat_ngram_size": lambda v: W.IntSlider(value=v, min=0, max=8, step=1, description="no-repeat n"),
    "max_new_tokens": lambda v: W.IntSlider(value=v, min=1, max=512, step=1, description="max new"),
    "seed": lambda v: W.IntText(value=0 if v is None else v, description="seed"),
}


def render_transcript(history: list, pending: Optional[str] = None, title: str = "") -> str:
    """Messages (+ the reply being streamed) -> HTML. All text is escaped."""
    parts = [f"<div style='font-weight:bold;margin-bottom:4px'>{html.escape(title)}</div>"] if title else []
    msgs = list(history) + ([{"role": "assistant", "content": pending + " \u258c"}] if pending is not None else [])
    for m in msgs:
        who = {"user": "You", "assistant": "Assistant", "system": "System"}.get(m["role"], m["role"])
        bg = "#e8f0fe" if m["role"] == "user" else "#f4f4f4"
        parts.append(f"<div style='background:{bg};padding:4px 8px;margin:3px 0;border-radius:6px;"
                     f"white-space:pre-wrap'><b>{who}:</b> {html.escape(m['content'])}</div>")
    if not msgs:
        parts.append("<div style='color:#888'>(no messages yet)</div>")
    return "".join(parts)


class ChatWidget:
    """Input, send, clear, sampling sliders, one transcript pane per model, a status line.

    Attributes tests use: `input`, `send_button`, `clear_button`, `side_by_side`, `sliders`,
    `panes` (one HTML per session), `status`, `sessions`.
    """

    def __init__(self, sessions: list, settings: ChatSettings):
        self.sessions = sessions
        self.settings = settings
        for s in sessions:
            s.settings = settings
        self.input = W.Textarea(placeholder="Type a message, then Send", layout=W.Layout(width="70%"))
        self.send_button = W.Button(description="Send", button_style="primary")
        self.clear_button = W.Button(description="Clear")
        self.side_by_side = W.Checkbox(value=len(sessions) > 1, description=self._compare_label(),
                                       disabled=len(sessions) < 2)
        self.panes = [W.HTML(render_transcript([], title=s.name),
                             layout=W.Layout(width="50%" if len(sessions) > 1 else "100%"))
                      for s in sessions]
        self.status = W.HTML("")
        self.sliders = {k: make(getattr(settings, k)) for k, make in _SLIDERS.items()}
        for slider in self.sliders.values():
            slider.observe(self.on_setting, names="value")
        self.send_button.on_click(self.on_send)
        self.clear_button.on_click(self.on_clear)
        self.side_by_side.observe(self._on_layout, names="value")
        self.row = W.HBox(self._visible_panes())
        controls = W.Accordion(children=[W.VBox(list(self.sliders.values()))], titles=("Sampling",))
        self.box = W.VBox([self.row, self.status, W.HBox([self.input, self.send_button, self.clear_button]),
                           self.side_by_side, controls])
        self.busy = False

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

    def on_send(self, _button=None) -> None:
        text = self.input.value.strip()
        if not text or self.busy:
            return
        self.busy, self.send_button.disabled = True, True
        self.input.value = ""
        lines = []
        try:
            for session in self.active:   # one after the other: two models would share 2 CPU cores
                pane = self.panes[self.sessions.index(session)]
                shown = session.history + [{"role": "user", "content": text}]
                streamed = []

                def show(delta: str, pane=pane, shown=shown, streamed=streamed) -> None:
                    streamed.append(delta)
                    pane.value = render_transcript(shown, "".join(streamed), title=session.name)

                show("")
                try:
                    session.send(text, on_delta=show)
                except Exception as e:  # shown in the widget: a notebook callback has nowhere to raise
                    self.status.value = f"<span style='color:#b00'>{html.escape(f'{type(e).__name__}: {e}')}</span>"
                    pane.value = render_transcript(session.history, title=session.name)
                    return
                pane.value = render_transcript(session.history, title=session.name)
                r = session.last
                lines.append(f"<b>{html.escape(session.name)}</b>: {html.escape(r.stats())}; "
                             f"{html.escape(r.context.note())}")
            self.status.value = "<br>".join(lines)
        finally:
            self.busy, self.send_button.disabled = False, False

    def on_clear(self, _button=None) -> None:
        for s, pane in zip(self.sessions, self.panes):
            s.reset()
            pane.value = render_transcript([], title=s.name)
        self.status.value = ""
        self.input.value = ""

    def _repr_mimebundle_(self, **kwargs):
        return self.box._repr_mimebundle_(**kwargs)

    def _ipython_display_(self):
        from IPython.display import display
        display(self.box)


def chat_widget(model: ModelSpec, compare: Optional[ModelSpec] = None, *,
                settings: Optional[ChatSettings] = None, names: tuple = ("fine-tuned", "base"),
                side_by_side: Optional[bool] = None) -> ChatWidget:
    """A chat widget over `model` (a ChatSession, a checkpoint path or a (model, info) pair);
    with `compare`, a side-by-side mode where both answer the same message (on by default)."""
    settings = settings or ChatSettings()
    def name_of(spec, default):
        return spec.name if isinstance(spec, ChatSession) else default

    sessions = [as_session(model, settings, name=name_of(model, names[0]))]
    if compare is not None:
        sessions.append(as_session(compare, settings, name=name_of(compare, names[1])))
    w = ChatWidget(sessions, settings)
    if side_by_side is not None and len(sessions) > 1:
        w.side_by_side.value = bool(side_by_side)
    return w
