"""The quiet set-up of a course notebook: `course.setup_notebook()`, once, in its import cell.

What the reader sees instead of noise:
  * library messages (the `mambaft` loggers) at INFO and above, as plain text on stdout, one line each.
    Jupyter shows stderr on pink: a page of it reads as errors.
  * progress bars (tqdm.auto, which the library uses) as ONE text line updated in place: live, it
    moves; in a notebook saved by papermill it is the bar's final state. A tqdm widget saved without
    its kernel keeps only the text it was created with, "0%".
  * the datasets library's own bars ("Map", "Filter", "Saving the dataset") off: `prepare` logs what it
    did in one line per step instead.
  * each distinct warning once per kernel.
Calling it again changes nothing (one handler, one patch).
"""
from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from pathlib import Path

from tqdm.std import tqdm as std_tqdm

LOGGER = "mambaft"
_HANDLER_NAME = "mambaft-notebook"


def setup_notebook() -> None:
    """Plain-text INFO logs on stdout, one-line progress bars, each warning once (see the module)."""
    log = logging.getLogger(LOGGER)
    if not any(getattr(h, "name", None) == _HANDLER_NAME for h in log.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.name = _HANDLER_NAME
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False          # the root logger (if a user configured one) would print it twice
    warnings.simplefilter("once")
    _line_bars()
    try:
        import datasets
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_warning()
    except ImportError:  # pragma: no cover - a dependency of the package
        pass


@contextlib.contextmanager
def output_to(path):
    """Print what the block prints (stdout and stderr) into the file `path` instead of the notebook:
    a training run's plan and evaluation lines, which its log file keeps. Library logs still show."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield path


def _line_bars() -> None:
    """tqdm.auto.tqdm -> LineBar, also in the mambaft modules that already imported it by name."""
    import tqdm.auto
    import tqdm.autonotebook

    original = tqdm.auto.tqdm
    if original is LineBar:
        return
    tqdm.auto.tqdm = tqdm.autonotebook.tqdm = LineBar
    for name, module in list(sys.modules.items()):
        if name.startswith("mambaft") and getattr(module, "tqdm", None) is original:
            module.tqdm = LineBar


class LineBar(std_tqdm):
    """A tqdm bar drawn as one text output updated in place (an IPython display id), never a widget."""

    def __init__(self, *args, **kwargs):
        self._handle = None
        kwargs["file"] = io.StringIO()            # tqdm's own writes (a final newline): nowhere
        kwargs.setdefault("mininterval", 0.5)     # at most 2 redraws a second: each is a kernel message
        kwargs.setdefault("ncols", 100)
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        from IPython.display import display

        from mambaft.plots import StatusLine
        # msg "" is leave=False clearing the bar at its end: show its final state instead (a bar
        # shorter than mininterval was never drawn, and would stay at its first "0%")
        text = msg or self.__str__()
        if self._handle is None:
            self._handle = display(StatusLine(text), display_id=True)
        else:
            self._handle.update(StatusLine(text))
        return True

    def clear(self, nolock=False):
        pass                  # the line is replaced in place: nothing to erase
