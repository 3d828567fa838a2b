"""See it learn: what the model answered at each evaluation of a run, and how its replies behaved.

The training loop writes the probes' answers at every evaluation (`OUT/probes/step_N.jsonl`, one JSON
object per probe: step, id, lang, prompt, answer, raw, passed, stopped, end_token, new_tokens;
mambaft.train.evaluation.write_probe_answers). Step 0 is the model before its first step (the base,
or phase 1's model for phase 2 of the specialized strategy), written when the run evaluates at start.

Beside them, metrics.jsonl's evaluation rows (val loss, how the greedy replies behave, the probes
passed) are drawn by mambaft.plots.plot_behaviour; `behaviour_reading` says how to read that figure.

    from mambaft import course
    for t in course.probe_tables(cfg, course.finetune_dir(RUN_DIR)):
        print(t.text()); print(t.reading())
    print(course.behaviour_reading(course.finetune_dir(RUN_DIR) / "metrics.jsonl"))
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from mambaft.course import PathLike, phase_dirs

PASS, FAIL = "+", "-"           # the mark before each answer: passed its probe's rule, or not
_STEP_FILE = re.compile(r"^step_(\d+)\.jsonl$")


def probe_files(run: PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every OUT/probes/step_N.jsonl of one run folder, by step."""
    folder = Path(run) / "probes"
    found = [(int(m.group(1)), p) for p in folder.glob("step_*.jsonl") if (m := _STEP_FILE.match(p.name))]
    return sorted(found)


def _short(answer: str, width: int) -> str:
    """An answer on one line in at most `width` characters ("(empty)" when nothing is left to show)."""
    text = " ".join(answer.split())
    if not text:
        return "(empty)"
    return text if len(text) <= width else text[: width - 3] + "..."


def _spread(n: int, k: int) -> list[int]:
    """k indices of range(n), evenly spread, the first and the last included (all of them if n <= k)."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


@dataclass
class ProbeTable:
    """The probes' answers of one run folder: one row per probe, one column per evaluation step."""
    steps: list                                  # every step with a probes file, ascending
    ids: list                                    # probe ids, in the order of the first file
    answers: dict = field(default_factory=dict)  # (id, step) -> the file's record
    start: str = "base"                          # what step 0 is: "base", or "phase 1" for phase 2

    def passed(self, step: int) -> int:
        return sum(bool(self.answers[(i, step)]["passed"]) for i in self.ids if (i, step) in self.answers)

    def stopped(self, step: int) -> int:
        return sum(bool(self.answers[(i, step)]["stopped"]) for i in self.ids if (i, step) in self.answers)

    def label(self, step: int) -> str:
        return f"{step} ({self.start})" if step == 0 else str(step)

    def shown_steps(self, columns: int) -> list[int]:
        return [self.steps[i] for i in _spread(len(self.steps), max(2, columns))]

    def text(self, columns: int = 5, width: int = 20) -> str:
        """The table as text: at most `columns` steps (evenly spread, first and last kept), each answer
        shortened to `width` characters after its mark (+ passed, - failed); the last line counts the
        probes passed and stopped at each shown step."""
        steps = self.shown_steps(columns)
        w_id = max([len("probe")] + [len(i) for i in self.ids])
        w = max([width + 2] + [len(self.label(s)) for s in steps])
        cell = lambda i, s: ("" if (i, s) not in self.answers else  # noqa: E731
                             f"{PASS if self.answers[(i, s)]['passed'] else FAIL} "
                             f"{_short(self.answers[(i, s)].get('answer') or '', width)}")
        lines = [f"{'probe':<{w_id}}  " + "  ".join(f"{self.label(s):<{w}}" for s in steps)]
        lines += [f"{i:<{w_id}}  " + "  ".join(f"{cell(i, s):<{w}}" for s in steps) for i in self.ids]
        lines.append(f"{'passed/stopped':<{w_id}}  " + "  ".join(
            f"{f'{self.passed(s)}/{self.stopped(s)} of {len(self.ids)}':<{w}}" for s in steps))
        return "\n".join(line.rstrip() for line in lines)

    def reading(self) -> str:
        """How to read the table, with this run's numbers (first and last step)."""
        first, last, n = self.steps[0], self.steps[-1], len(self.ids)
        ends = self.stopped(last) - self.stopped(first)
        right = self.passed(last) - self.passed(first)
        if ends > right:
            what = "it learned to end its replies more than to answer them right"
        elif right > 0:
            what = "it answers more probes right"
        else:
            what = "no more of its replies end or answer right than at the start"
        return (f"Read each row left to right: one probe's greedy answer at each checkpoint ({PASS} passed its "
                f"rule, {FAIL} failed); at step {self.label(first)} {self.passed(first)} of {n} probes passed "
                f"and {self.stopped(first)} stopped before the token limit, at step {last} {self.passed(last)} "
                f"passed and {self.stopped(last)} stopped: {what}.")

    def records(self) -> list[dict]:
        """One dict per probe: id and {step: {"answer", "passed", "stopped"}} (summary.json)."""
        return [{"id": i, "steps": {s: {k: self.answers[(i, s)].get(k) for k in ("answer", "passed", "stopped")}
                                    for s in self.steps if (i, s) in self.answers}} for i in self.ids]


def probe_table(run: PathLike, start: str = "base") -> Optional[ProbeTable]:
    """The ProbeTable of one run folder (None when it holds no probes file: a run without probes)."""
    files = probe_files(run)
    if not files:
        return None
    ids: list = []
    answers: dict = {}
    for step, path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            if rec["id"] not in ids:
                ids.append(rec["id"])
            answers[(rec["id"], step)] = rec
    return ProbeTable(steps=[s for s, _ in files], ids=ids, answers=answers, start=start)


def probe_tables(cfg, run: PathLike) -> list[ProbeTable]:
    """One ProbeTable per phase of the run (specialized: phase 2 starts from phase 1's model)."""
    tables = []
    for k, d in enumerate(phase_dirs(cfg, run)):
        t = probe_table(d, start="base" if k == 0 else "phase 1")
        if t is not None:
            tables.append(t)
    return tables


# What the reading of `behaviour_reading` quotes: (metrics key, words, format), first -> last evaluation.
_READ = (("val_loss", "val loss", "{:.2f}"), ("val_stop_rate", "stop rate", "{:.2f}"),
         ("val_mean_words", "words per reply", "{:.1f}"), ("val_distinct", "distinct replies", "{:.2f}"),
         ("val_bare_rate", "bare replies", "{:.2f}"), ("probe_pass_rate", "probes passed", "{:.2f}"))


def behaviour_reading(source) -> str:
    """One sentence on how to read `mambaft.plots.plot_behaviour`, with this run's numbers: each series
    from its first evaluation to its last, the range the stop rate swung over after its first
    evaluation, and what the loss beside distinct and bare replies says."""
    from mambaft.plots import Metrics
    from mambaft.train.metrics import read_metrics

    m = source if isinstance(source, Metrics) else Metrics(read_metrics(source))
    moved, ends = [], {}
    for key, words, fmt in _READ:
        steps, values = m.series(key)
        if not steps:
            continue
        ends[key] = (values[0], values[-1])
        text = f"{words} {fmt.format(values[0])} -> {fmt.format(values[-1])}"
        if key == "val_stop_rate" and len(values) > 2:   # the swings between the first and last evaluation
            text += f" (between {min(values[1:]):.2f} and {max(values[1:]):.2f} after step {steps[0]})"
        moved.append(text)
    if not moved:
        return "No evaluation was recorded: the run evaluates at every eval_every steps (and at step 0)."
    steps = [s for key, _, _ in _READ for s in m.series(key)[0]]
    fell = "val_loss" in ends and ends["val_loss"][1] < ends["val_loss"][0]
    narrower = (("val_distinct" in ends and ends["val_distinct"][1] < ends["val_distinct"][0])
                or ("val_bare_rate" in ends and ends["val_bare_rate"][1] > ends["val_bare_rate"][0]))
    if fell and narrower:
        what = ("the loss fell while the replies got fewer or barer: a falling loss is the model fitting the "
                "answers' tokens, and here it learned the format of a reply more than the answers")
    elif fell:
        what = "the loss fell and the replies did not get fewer or barer"
    else:
        what = "the validation loss did not fall, so read the other panels as noise around the base"
    return f"From step {min(steps)} to step {max(steps)}: {', '.join(moved)}; {what}."
