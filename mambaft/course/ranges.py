"""The measured ranges of demo course runs: min-max over run folders of what notebook 04 calls
"fine-tuned", grouped by strategy and CPU class, each run listed with its command and checked against
the bounds (mambaft.evaluate.bounds: the one place for their numbers).

    mambaft ranges outputs/runs/*                 # print the table and the ranges
    mambaft ranges outputs/runs/* --markdown ranges.md

A run folder is what `mambaft course --out DIR --run-name NAME` writes: course.json (parameters,
command, CPU class, times), 04_evaluation/summary.json (the models' numbers and the chosen
checkpoint), 04_evaluation/compare.json (every model's results, replies included). The bounds hold on
the test split's replies (stop, rep_3, distinct, bare), on the probes (passed > the base's), and for
the strategies of PROBE_BOUNDS on each language's probes (stop, rep_3).

A run written before issue 23 has no distinct or bare rate in its summary: they are recomputed from
the replies its compare.json stored (the probes' and up to 10 validation answers; its
"replies_split" says so), and its rep_3 of null (no reply held a 3-gram) stays unmeasured, which fails.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from mambaft.evaluate.bounds import BOUNDS, Check, probe_check, reply_checks

MODEL, BASE = "fine-tuned", "base"

# Besides the test split's replies: the EN probes for the strategies that train conversations, and the
# domain's FR probes for specialized (issue 18: "on the EN probes and, for specialized (French), on the
# FR probes"). Stop and rep_3 only: the probes' right answers are often short ("4.", "Bonjour !").
PROBE_BOUNDS = {"conversational": ("en",), "specialized": ("en", "fr")}


class RunFolderError(ValueError):
    """A folder is not a finished `mambaft course` run (the message names the missing file)."""


def _read(path: Path) -> dict:
    if not path.is_file():
        raise RunFolderError(f"{path}: missing (is {path.parent} a finished `mambaft course` run?)")
    return json.loads(path.read_text(encoding="utf-8"))


def flat_record(m: dict, base: Optional[dict], strategy: Optional[str]) -> dict:
    """A model's row of notebook 04's summary (course.evaluation_summary) and the base's -> the flat
    numbers the bounds read."""
    rec = {"strategy": strategy, "replies_split": m.get("replies_split"), "replies": m.get("replies"),
           "stop_rate": m.get("stop_rate"), "rep_3": m.get("rep_3"), "too_short_3": m.get("too_short_3"),
           "distinct_replies": m.get("distinct_replies"), "bare_rate": m.get("bare_rate"),
           "mean_words": m.get("mean_words"), "mean_new_tokens": m.get("mean_new_tokens"),
           "probe_pass_rate": m.get("probe_pass_rate"),
           "base_probe_pass_rate": (base or {}).get("probe_pass_rate")}
    for lang, b in (m.get("probes_by_lang") or {}).items():
        rec[f"{lang}_probe_stop"] = b.get("stop_rate")
        rec[f"{lang}_probe_rep_3"] = b.get("rep_3")
    return rec


def checks(rec: dict) -> list[Check]:
    """Every rule of the bounds on one flat record (`flat_record`)."""
    out = reply_checks(rec.get("stop_rate"), rec.get("rep_3"), rec.get("distinct_replies"), rec.get("bare_rate"))
    out.append(probe_check(rec.get("probe_pass_rate"), rec.get("base_probe_pass_rate")))
    for lang in PROBE_BOUNDS.get(rec.get("strategy"), ()):
        stop, rep = rec.get(f"{lang}_probe_stop"), rec.get(f"{lang}_probe_rep_3")
        out += [c for c in reply_checks(stop, rep, None, None, where=f" ({lang.upper()} probes)")
                if c.metric in ("stop_rate", "rep_3")]
    return out


def meets_bounds(rec: dict) -> bool:
    return all(c.ok for c in checks(rec))


def _stored_replies(run_dir: Path) -> Optional[tuple]:
    """(prompts, answers, label) of the replies a run before issue 23 kept of its fine-tuned model in
    compare.json: the probes' and the first 10 validation answers ("examples"). None without them."""
    path = run_dir / "04_evaluation" / "compare.json"
    if not path.is_file():
        return None
    res = next((r for r in json.loads(path.read_text(encoding="utf-8")).get("results") or []
                if r.get("name") == MODEL), None)
    if res is None:
        return None
    probes = (res.get("probes") or {}).get("results") or []
    examples = (res.get("answers") or {}).get("examples") or []
    prompts = [p.get("question") for p in probes] + [e.get("question") for e in examples]
    answers = [p.get("answer") or "" for p in probes] + [e.get("answer") or "" for e in examples]
    if not answers:
        return None
    return prompts, answers, f"recomputed from compare.json: {len(probes)} probe + {len(examples)} validation replies"


def read_run(run_dir) -> dict:
    """One run folder -> a flat record of the fine-tuned model's numbers and the run's provenance."""
    run_dir = Path(run_dir)
    course = _read(run_dir / "course.json")
    ev = _read(run_dir / "04_evaluation" / "summary.json")
    models = ev.get("models") or {}
    if MODEL not in models:
        raise RunFolderError(f"{run_dir}: notebook 04 recorded no {MODEL!r} model (has: {', '.join(models)})")
    chosen = ev.get("chosen") or {}
    val_loss = next((c.get("val_loss") for c in chosen.get("candidates") or [] if c.get("step") == chosen.get("step")),
                    None)
    env = course.get("environment") or {}
    rec = {"run": run_dir.name, "path": str(run_dir), "seed": (course.get("params") or {}).get("SEED"),
           "cpu_class": env.get("cpu_class", "unknown"), "precision": env.get("auto_precision"),
           "command": course.get("command") or "",
           "minutes": round(course["total_seconds"] / 60, 1) if course.get("total_seconds") else None,
           "checkpoint": f"step {chosen['step']} ({chosen.get('rule')})" if chosen else "final",
           "val_loss": val_loss,
           **flat_record(models[MODEL], models.get(BASE), course.get("strategy"))}
    if rec["distinct_replies"] is None and rec["bare_rate"] is None:
        stored = _stored_replies(run_dir)
        if stored is not None:
            from mambaft.evaluate.metrics import reply_quality
            prompts, answers, label = stored
            q = reply_quality(prompts, answers, [True] * len(answers))
            rec.update(distinct_replies=q["distinct_replies"], bare_rate=q["bare_rate"],
                       mean_words=q["mean_words"], replies_split=label, replies=len(answers))
    rec["meets_bounds"] = meets_bounds(rec)
    rec["fails"] = [c.rule for c in checks(rec) if not c.ok]
    return rec


METRICS = ("stop_rate", "rep_3", "distinct_replies", "bare_rate", "mean_words", "mean_new_tokens",
           "probe_pass_rate", "base_probe_pass_rate", "val_loss",
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


def bounds_line() -> str:
    b = BOUNDS
    return (f"Bounds (mambaft.evaluate.bounds), on the test split's replies: stop >= {b.min_stop}, rep_3 <= "
            f"{b.max_rep_3} (unmeasured fails), distinct replies >= {b.min_distinct}, bare replies <= {b.max_bare}; "
            f"probes passed > the base's; conversational: EN probes, specialized: EN and FR probes, stop and rep_3.")


def markdown(records: Sequence[dict]) -> str:
    lines = ["| strategy | CPU class | runs | stop rate | rep_3 | distinct replies | bare replies | words/reply "
             "| reply tokens | probes passed (base) | EN probes stop / rep_3 | FR probes stop / rep_3 | val loss "
             "| minutes | bounds met |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in ranges(records):
        lines.append(f"| {g['strategy']} | {g['cpu_class']} | {g['runs']} | {_span(g['stop_rate'])} | "
                     f"{_span(g['rep_3'])} | {_span(g['distinct_replies'])} | {_span(g['bare_rate'])} | "
                     f"{_span(g['mean_words'], 1)} | {_span(g['mean_new_tokens'], 1)} | "
                     f"{_span(g['probe_pass_rate'])} ({_span(g['base_probe_pass_rate'])}) | "
                     f"{_span(g['en_probe_stop'])} / {_span(g['en_probe_rep_3'])} | "
                     f"{_span(g['fr_probe_stop'])} / {_span(g['fr_probe_rep_3'])} | {_span(g['val_loss'], 3)} | "
                     f"{_span(g['minutes'], 1)} | {'yes' if g['all_meet_bounds'] else 'NO'} |")
    lines += ["", bounds_line(), "", "Runs (the fine-tuned model of each):", ""]
    f = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    for r in records:
        lines.append(f"- `{r['run']}` ({r['cpu_class']}; {r['checkpoint']}; {f(r['minutes'], 1)} min): stop "
                     f"{f(r['stop_rate'])}, rep_3 {'unmeasured' if r['rep_3'] is None else f(r['rep_3'])}, "
                     f"distinct {f(r['distinct_replies'])}, bare {f(r['bare_rate'])}, "
                     f"{f(r['mean_words'], 1)} words/reply, {f(r['mean_new_tokens'], 1)} tokens/reply "
                     f"[{r.get('replies_split') or '?'}]; probes {f(r['probe_pass_rate'])} (base "
                     f"{f(r['base_probe_pass_rate'])}); val loss {f(r['val_loss'], 3)}; "
                     + ("meets the bounds" if r["meets_bounds"] else "fails: " + ", ".join(r["fails"]))
                     + f"; `{r['command']}`")
    return "\n".join(lines) + "\n"
