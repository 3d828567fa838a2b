"""Loss plots from `OUT/metrics.jsonl`, also live while training runs in another process.

The training loop appends one JSON object per line (the source of truth for plots):
    {"step": 10, "loss": 2.3, "lr": 1e-4, "tokens_per_s": 900}             a training step
    {"step": 20, "val_loss": 2.1, "heldout_ppl": 31.0}                      an evaluation
The follower reads only whole lines: the writer may be in the middle of one (a half-written last line
waits for its newline). A resumed run replays steps after its checkpoint; for each value the later
record of a step wins and replaces what the crashed run had logged past it.

    plot_metrics("outputs/run/metrics.jsonl", "outputs/run/loss.png")           # one static figure
    plot_behaviour("outputs/run/metrics.jsonl")    # the replies (stop, words, distinct, bare, probes) beside the loss
    follow_metrics("outputs/run/metrics.jsonl", until=proc, out_png="outputs/run/loss.png")
        # Jupyter (papermill included): one figure and one status line updated in place;
        # elsewhere: one text line per poll; the PNG is written when `until` says training is over.

    mambaft plot outputs/run/metrics.jsonl --png loss.png [--follow]
"""
from __future__ import annotations

import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from mambaft.train.metrics import read_metrics

TRAIN_KEYS = ("loss", "lr", "tokens_per_s")
EVAL_KEYS = ("val_loss", "heldout_ppl")


# --- reading -------------------------------------------------------------------------------------
@dataclass
class Metrics:
    """Records of a metrics.jsonl, in file order."""
    records: list = field(default_factory=list)

    def series(self, key: str) -> tuple[list, list]:
        """(steps, values) of one numeric key. When a step comes again (a resumed run), the new
        value replaces the old one and every value logged after it."""
        steps: list = []
        values: list = []
        for r in self.records:
            v = r.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            s = r["step"]
            while steps and steps[-1] >= s:
                steps.pop()
                values.pop()
            steps.append(s)
            values.append(float(v))
        return steps, values

    @property
    def keys(self) -> list:
        seen: dict = {}
        for r in self.records:
            for k, v in r.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    seen.setdefault(k, None)
        return list(seen)

    def last(self, key: str) -> Optional[tuple]:
        steps, values = self.series(key)
        return (steps[-1], values[-1]) if steps else None

    def summary(self) -> str:
        """One line: the latest training values and the latest evaluation."""
        parts = []
        last_step = max((r["step"] for r in self.records), default=None)
        if last_step is None:
            return "no metrics yet"
        parts.append(f"step {last_step}")
        fmt = {"loss": "loss {:.4f}", "lr": "lr {:.2e}", "tokens_per_s": "{:.0f} tok/s",
               "val_loss": "val_loss {:.4f}", "heldout_ppl": "held-out ppl {:.2f}"}
        for key in (*TRAIN_KEYS, *EVAL_KEYS):
            last = self.last(key)
            if last is not None:
                text = fmt[key].format(last[1])
                parts.append(text if key in TRAIN_KEYS else f"{text} @ {last[0]}")
        return " | ".join(parts)


class MetricsReader:
    """Incremental reader of a JSONL file another process is appending to.

    `poll()` returns the records completed since the last call. Bytes after the last newline are
    kept for the next call (a line being written); `poll(final=True)` also parses that tail, for a
    writer that ended without a newline. A line that is complete but not a JSON object with an
    integer "step" is skipped and listed in `bad_lines` (line number, reason).
    """

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        self.metrics = Metrics()
        self.bad_lines: list = []
        self._pos = 0            # bytes consumed (whole lines only)
        self._tail = b""         # an unfinished last line
        self._line_no = 0

    def _parse(self, raw: bytes) -> Optional[dict]:
        self._line_no += 1
        text = raw.decode("utf-8", errors="replace").strip()
        if not text:
            return None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            self.bad_lines.append((self._line_no, f"not JSON ({e.msg})"))
            return None
        if not isinstance(obj, dict) or isinstance(obj.get("step"), bool) or not isinstance(obj.get("step"), int):
            self.bad_lines.append((self._line_no, "not an object with an integer 'step'"))
            return None
        return obj

    def poll(self, final: bool = False) -> list:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []            # training has not written its first line yet
        if size < self._pos:     # the file was replaced (a run started over): read it again
            self.__init__(self.path)
        new = []
        with open(self.path, "rb") as f:
            f.seek(self._pos)
            chunk = f.read()
        self._pos += len(chunk)
        data = self._tail + chunk
        *lines, self._tail = data.split(b"\n")
        if final and self._tail.strip():
            lines.append(self._tail)
            self._tail = b""
        for raw in lines:
            obj = self._parse(raw)
            if obj is not None:
                new.append(obj)
        self.metrics.records.extend(new)
        return new


# --- drawing -------------------------------------------------------------------------------------
_INLINE_FIGURE = None   # the Figure subclass below, made on first use (matplotlib loads only when drawing)


def new_figure(**kwargs):
    """A bare matplotlib Figure (no pyplot: no global state, works headless) that shows itself inline.

    A plain `Figure` returned by a cell prints `<Figure size 800x320 with 1 Axes>`: IPython draws figures
    only when a backend registered a PNG formatter for them (`%matplotlib inline`), and nothing in a
    kernel that never imports pyplot does. This subclass carries its own `_repr_png_`, so the figure
    is an image wherever IPython displays it (a live kernel, papermill's saved notebook), with no
    backend to register. Elsewhere it is a Figure like any other (savefig, subplots)."""
    global _INLINE_FIGURE
    if _INLINE_FIGURE is None:
        from matplotlib.figure import Figure

        class InlineFigure(Figure):
            def _repr_png_(self) -> bytes:
                return figure_png(self)

        _INLINE_FIGURE = InlineFigure
    return _INLINE_FIGURE(**kwargs)


def _ema(values: list, beta: float = 0.9) -> list:
    """Bias-corrected exponential moving average (the trend under a noisy per-step loss)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** i))
    return out


def plot_metrics(source: Union[str, Path, Metrics], out_png: Union[str, Path, None] = None,
                 title: Optional[str] = None):
    """A 2x2 figure: train/val loss, learning rate, tokens/s, held-out perplexity. Saves `out_png`.

    A figure of `new_figure`: no pyplot state, and an image when a notebook cell returns it."""
    metrics = source if isinstance(source, Metrics) else Metrics(read_metrics(source))
    fig = new_figure(figsize=(11, 7), layout="constrained")
    ax_loss, ax_lr, ax_tps, ax_ppl = fig.subplots(2, 2).ravel()
    steps, loss = metrics.series("loss")
    if steps:
        ax_loss.plot(steps, loss, color="tab:blue", alpha=0.35, lw=1, label="train loss")
        if len(steps) >= 20:  # a trend needs enough points; an EMA of 3 points only lags
            ax_loss.plot(steps, _ema(loss), color="tab:blue", lw=2, label="train loss (EMA 0.9)")
    for key in [k for k in metrics.keys if k == "val_loss" or k.startswith(("val_loss/", "val_loss_"))]:
        s, v = metrics.series(key)
        ax_loss.plot(s, v, marker="o", lw=1.5, label=key.replace("_", " "))
    panels = ((ax_loss, "loss (nats/token)", None), (ax_lr, "learning rate", "lr"),
              (ax_tps, "tokens / s", "tokens_per_s"), (ax_ppl, "held-out perplexity", "heldout_ppl"))
    for ax, label, key in panels:
        if key is not None:
            s, v = metrics.series(key)
            if s:
                ax.plot(s, v, marker="o" if key == "heldout_ppl" else None,
                        color={"lr": "tab:green", "tokens_per_s": "tab:orange"}.get(key, "tab:red"))
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes, color="gray")
    if ax_loss.lines:
        ax_loss.legend(loc="upper right", fontsize=8)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    fig.suptitle(title or metrics.summary(), fontsize=10)
    if out_png is not None:
        out_png = Path(out_png)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png, dpi=100)
    return fig


# The panels of `plot_behaviour`: (title, y label, [(metrics key, legend label)]). The val_ keys are the
# greedy replies to the selection split's questions (mambaft.train.evaluation.reply_behaviour), the
# probe_ keys the fixed probes (write_probe_answers); all of them are shares in [0, 1] except the words.
BEHAVIOUR_PANELS = (
    ("loss", "nats/token", [("loss", "train loss"), ("val_loss", "val loss")]),
    ("replies that stop", "share", [("val_stop_rate", "val questions"), ("probe_stop_rate", "probes")]),
    ("words per reply", "words", [("val_mean_words", "val questions")]),
    ("distinct replies", "distinct / questions", [("val_distinct", "val questions")]),
    ("bare and empty replies", "share", [("val_bare_rate", "bare (< 3 words)"), ("val_empty_rate", "empty")]),
    ("probes passed", "share", [("probe_pass_rate", "probes")]),
)


def plot_behaviour(source: Union[str, Path, Metrics], out_png: Union[str, Path, None] = None,
                   title: Optional[str] = None):
    """How the replies behave beside the loss, across the evaluation steps: one panel each for the
    loss, the stop rate, words per reply, distinct replies, bare (and empty) replies and the probes
    passed (BEHAVIOUR_PANELS). A figure of `new_figure` (an image when a cell returns it); saves
    `out_png` when given."""
    metrics = source if isinstance(source, Metrics) else Metrics(read_metrics(source))
    fig = new_figure(figsize=(12, 6.5), layout="constrained")
    for ax, (name, ylabel, keys) in zip(fig.subplots(2, 3).ravel(), BEHAVIOUR_PANELS):
        for key, label in keys:
            s, v = metrics.series(key)
            if s and key == "loss":   # one point per step: thin, under the evaluations' markers
                ax.plot(s, v, color="tab:blue", alpha=0.35, lw=1, label=label)
            elif s:
                ax.plot(s, v, marker="o", ms=3, lw=1.5, label=label)
        ax.set(title=name, xlabel="step", ylabel=ylabel)
        ax.grid(alpha=0.3)
        if ylabel == "share":
            ax.set_ylim(-0.05, 1.05)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes, color="gray")
    fig.suptitle(title or "the replies beside the loss, at each evaluation", fontsize=10)
    if out_png is not None:
        out_png = Path(out_png)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png, dpi=100)
    return fig


def figure_png(fig) -> bytes:
    """The figure as PNG bytes, at 80 dpi (an 11 x 7 in figure -> 880 x 560 px, about 60 KB)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


# --- following a run -----------------------------------------------------------------------------
class TextSink:
    """Headless: one line per poll that brought new records."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def update(self, metrics: Metrics, new: list) -> None:
        self.stream.write(metrics.summary() + "\n")
        self.stream.flush()

    def close(self, metrics: Metrics, note: str = "") -> None:
        self.stream.write(f"final: {metrics.summary()}{' (' + note + ')' if note else ''}\n")
        self.stream.flush()


class StatusLine(str):
    """A str that a notebook shows without quotes (its text/plain repr is the text itself)."""

    def __repr__(self) -> str:
        return str(self)


class NotebookSink:
    """Jupyter (papermill too): a status line and a PNG, each one display updated in place, so the
    saved notebook keeps the last figure even though no widget state is saved."""

    def __init__(self, display: Optional[Callable] = None, image: Optional[Callable] = None,
                 plot_every_s: float = 5.0):
        if display is None or image is None:
            from IPython.display import Image, display as ipy_display
            display, image = display or ipy_display, image or Image
        self._display, self._image = display, image
        self.plot_every_s = plot_every_s
        self._last_plot = -math.inf
        self._text = display(StatusLine("following metrics..."), display_id=True)
        self._fig = display(self._image(data=figure_png(plot_metrics(Metrics()))), display_id=True)

    def update(self, metrics: Metrics, new: list, force: bool = False) -> None:
        self._text.update(StatusLine(metrics.summary()))
        # Drawing a PNG takes ~0.2 s of a CPU the training also needs: redraw at most every few s.
        if force or time.monotonic() - self._last_plot >= self.plot_every_s:
            self._fig.update(self._image(data=figure_png(plot_metrics(metrics))))
            self._last_plot = time.monotonic()

    def close(self, metrics: Metrics, note: str = "") -> None:
        self.update(metrics, [], force=True)
        self._text.update(StatusLine(f"final: {metrics.summary()}{' (' + note + ')' if note else ''}"))


def in_notebook() -> bool:
    """True inside a Jupyter kernel (also under papermill), False in a terminal or plain python."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def _finished(until: Any) -> tuple[bool, str]:
    """Is training over? `until`: None (never), a callable -> bool, a Popen (exited), a Thread."""
    if until is None:
        return False, ""
    if hasattr(until, "poll") and callable(until.poll):          # subprocess.Popen
        code = until.poll()
        return code is not None, "" if code is None else f"training process exited with code {code}"
    if hasattr(until, "is_alive"):                                 # threading.Thread / Process
        return not until.is_alive(), "training finished"
    if callable(until):
        return bool(until()), "done"
    raise TypeError(f"until={until!r}: expected None, a callable, a subprocess.Popen or a Thread")


def follow_metrics(path: Union[str, Path], until: Any = None, out_png: Union[str, Path, None] = None,
                   interval: float = 2.0, timeout: Optional[float] = None, mode: str = "auto",
                   sink=None) -> Metrics:
    """Follow a metrics file until `until` says training is over (or `timeout` seconds, or Ctrl-C),
    showing progress; then read the last lines, save `out_png` and return the metrics.

    mode: "auto" (notebook display in Jupyter, else text), "notebook", "text", or "none".
    """
    if mode not in ("auto", "notebook", "text", "none"):
        raise ValueError(f"mode={mode!r}: expected auto, notebook, text or none")
    if sink is None and mode != "none":
        sink = NotebookSink() if mode == "notebook" or (mode == "auto" and in_notebook()) else TextSink()
    reader = MetricsReader(path)
    start = time.monotonic()
    note = ""
    try:
        while True:
            # Ask first, read second: every line written before the writer ended is then read.
            done, note = _finished(until)
            new = reader.poll(final=done)
            if new and sink is not None and not done:
                sink.update(reader.metrics, new)
            if done:
                break
            if timeout is not None and time.monotonic() - start >= timeout:
                note = f"stopped following after {timeout:g} s; training may still be running"
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        reader.poll()
        note = "interrupted; training may still be running"
    if reader.bad_lines:
        note += ("; " if note else "") + f"{len(reader.bad_lines)} unreadable line(s) skipped, first: " \
                f"line {reader.bad_lines[0][0]} ({reader.bad_lines[0][1]})"
    if sink is not None:
        sink.close(reader.metrics, note)
    if out_png is not None:
        plot_metrics(reader.metrics, out_png)
    return reader.metrics


APPEAR_TIMEOUT_S = 600.0   # `plot --follow` on a file not there yet: a run writes it within its first step


def _wait_for_file(path: str, timeout: float, interval: float) -> None:
    """Say that we wait for `path`, and for how long; FileNotFoundError if it never appears (or if
    even its folder is missing: a typo'd run folder, not a run still starting)."""
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{path}: no such file, and no folder {folder} (is the run's --out right?)")
    print(f"waiting for {path} to appear (a run writes it at its first step); giving up after {timeout:g} s",
          flush=True)
    deadline = time.monotonic() + timeout
    while not os.path.isfile(path):
        if time.monotonic() >= deadline:
            raise FileNotFoundError(f"{path}: did not appear within {timeout:g} s (is the run started?)")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
