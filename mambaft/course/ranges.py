"""The measured ranges of demo course runs: min-max over run folders of what notebook 04 calls
"fine-tuned", grouped by strategy and CPU class, each run listed with its command.

    mambaft ranges outputs/runs/*                 # print the table and the ranges
    mambaft ranges outputs/runs/* --markdown ranges.md

A run folder is what `mambaft course --out DIR --run-name NAME` writes: course.json (parameters,
command, CPU class, times), 04_evaluation/summary.json (the models' numbers and the chosen
checkpoint). The bounds are issue 18's: the fine-tuned model stops in >= 0.85 of its replies with
rep_3 <= 0.25 over all its replies, and on the EN (conversational, specialized) and FR (specialized)
probes alone.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

MODEL = "fine-tuned"
MIN_STOP, MAX_REP3 = 0.85, 0.25      # issue 18's bounds on the fine-tuned model


class RunFolderError(ValueError):
    """A folder is not a finished `mambaft course` run (the message names the missing file)."""


def _read(path: Path) -> dict:
    if not path.is_file():
        raise RunFolderError(f"{path}: missing (is {path.parent} a finished `mambaft course` run?)")
    return json.loads(path.read_text(encoding="utf-8"))


def read_run(run_dir) -> dict:
    """One run folder -> a flat record of the fine-tuned model's numbers and the run's provenance."""
    run_dir = Path(run_dir)
    course = _read(run_dir / "course.json")
    ev = _read(run_dir / "04_evaluation" / "summary.json")
    models = ev.get("models") or {}
    if MODEL not in models:
        raise RunFolderError(f"{run_dir}: notebook 04 recorded no {MODEL!r} model (has: {', '.join(models)})")
    m = models[MODEL]
    chosen = ev.get("chosen") or {}
    val_loss = next((c.get("val_loss") for c in chosen.get("candidates") or [] if c.get("step") == chosen.get("step")),
                    None)
    env = course.get("environment") or {}
    rec = {"run": run_dir.name, "path": str(run_dir), "strategy": course.get("strategy"),
           "seed": (course.get("params") or {}).get("SEED"), "cpu_class": env.get("cpu_class", "unknown"),
           "precision": env.get("auto_precision"), "command": course.get("command") or "",
           "minutes": round(course["total_seconds"] / 60, 1) if course.get("total_seconds") else None,
           "checkpoint": f"step {chosen['step']} ({chosen.get('rule')})" if chosen else "final",
           # rep_3 is null when no reply had 3 words (mambaft.evaluate.metrics.degeneration averages over
           # replies that have 3-grams): then no 3-gram repeats, 0.0
           "stop_rate": m.get("stop_rate"),
           "rep_3": 0.0 if m.get("rep_3") is None and m.get("stop_rate") is not None else m.get("rep_3"),
           "mean_new_tokens": m.get("mean_new_tokens"),
           "probe_pass_rate": m.get("probe_pass_rate"), "val_loss": val_loss}
    for lang, b in (m.get("probes_by_lang") or {}).items():
        rec[f"{lang}_probe_stop"] = b.get("stop_rate")
        rec[f"{lang}_probe_rep_3"] = b.get("rep_3")
    rec["meets_bounds"] = meets_bounds(rec)
    return rec


# Besides all replies (probes + validation questions): the EN probes for the strategies that train
# conversations, and the domain's FR probes for specialized (issue 18: "on the EN probes and, for
# specialized (French), on the FR probes").
PROBE_BOUNDS = {"conversational": ("en",), "specialized": ("en", "fr")}


def meets_bounds(rec: dict) -> bool:
    langs = PROBE_BOUNDS.get(rec.get("strategy"), ())
    stops = [rec.get("stop_rate")] + [rec.get(f"{lang}_probe_stop") for lang in langs]
    reps = [rec.get("rep_3")] + [rec.get(f"{lang}_probe_rep_3") for lang in langs]
    return (all(v is not None and v >= MIN_STOP for v in stops)
            and all(v is not None and v <= MAX_REP3 for v in reps))


METRICS = ("stop_rate", "rep_3", "mean_new_tokens", "probe_pass_rate", "val_loss",
           "en_probe_stop", "en_probe_rep_3", "fr_probe_stop", "fr_probe_rep_3", "minutes")


def ranges(records: Sequence[dict]) -> list[dict]:
    """Per (strategy, CPU class): the number of runs and min-max of every metric."""
    groups: dict = {}
    for r in records:
        groups.setdefault((r["strategy"], r["cpu_class"]), []).append(r)
    out = []
    for (strategy, cpu), rs in groups.items():
        row = {"strategy": strategy, "cpu_class": cpu, "runs": len(rs),
               "all_meet_bounds": all(r["meets_bounds"] for r in rs)}
        for k in METRICS:
            vals = [r[k] for r in rs if r.get(k) is not None]
            row[k] = (min(vals), max(vals)) if vals else None
        out.append(row)
    return out


def _span(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    lo, hi = v
    return f"{lo:.{digits}f}" if lo == hi else f"{lo:.{digits}f}-{hi:.{digits}f}"


def markdown(records: Sequence[dict]) -> str:
    lines = ["| strategy | CPU class | runs | stop rate | rep_3 | reply tokens | EN probes stop / rep_3 "
             "| FR probes stop / rep_3 | val loss | minutes | bounds met |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in ranges(records):
        lines.append(f"| {g['strategy']} | {g['cpu_class']} | {g['runs']} | {_span(g['stop_rate'])} | "
                     f"{_span(g['rep_3'])} | {_span(g['mean_new_tokens'], 1)} | "
                     f"{_span(g['en_probe_stop'])} / {_span(g['en_probe_rep_3'])} | "
                     f"{_span(g['fr_probe_stop'])} / {_span(g['fr_probe_rep_3'])} | {_span(g['val_loss'], 3)} | "
                     f"{_span(g['minutes'], 1)} | {'yes' if g['all_meet_bounds'] else 'NO'} |")
    lines += ["", "Runs (the fine-tuned model of each):", ""]
    f = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    for r in records:
        lines.append(f"- `{r['run']}` ({r['cpu_class']}; {r['checkpoint']}; {f(r['minutes'], 1)} min): stop "
                     f"{f(r['stop_rate'])}, rep_3 {f(r['rep_3'])}, {f(r['mean_new_tokens'], 1)} tokens/reply, "
                     f"val loss {f(r['val_loss'], 3)}; `{r['command']}`")
    return "\n".join(lines) + "\n"
