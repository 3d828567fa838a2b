"""What the notebooks record (RUN_DIR/<notebook>/summary.json, asserted by the tests) and the tables
and plots they print from it."""
from __future__ import annotations

import json
import sys
from typing import Optional, Sequence

from mambaft.course import PathLike, phase_dirs
from mambaft.course.models import checkpoints


def diagnosis_summary(d: dict, knows=None) -> dict:
    """The numbers of notebook 00 (from mambaft.evaluate.diagnosis.diagnose) and, when given, what
    the base knows (mambaft.course.knowledge.base_continuations)."""
    sym, deg = d["symptoms"], d["symptoms"]["degeneration"]
    knowledge = None if knows is None else {"known": knows.known, "checked": knows.checked,
                                            "distinct": knows.distinct, "continuations": knows.records()}
    return {"knowledge": knowledge, "model": d["model"], "receptive_field": d["receptive_field"]["receptive_field"],
            "receptive_field_saturated": d["receptive_field"]["saturated"],
            "parameters": d["facts"].get("parameters"), "dead_parameters": d["facts"].get("dead_parameters"),
            "p_end_mean": d["end_token"]["mean"], "p_end_above_half": d["end_token"]["above_half"],
            "prompts": len(sym["replies"]), "loop_rate": sym["rates"]["loop"],
            "no_stop_rate": sym["rates"]["no_stop"], "off_topic_rate": sym["rates"]["off_topic"],
            "end_token_rate": deg["end_token_rate"], "mean_new_tokens": deg["mean_new_tokens"],
            "replies": [{k: r[k] for k in ("id", "answer", "stopped_by", "loop", "rep_3")} for r in sym["replies"]]}


def plot_receptive_field(rf: dict, path: Optional[PathLike] = None):
    """Relative change of the last logits when the token k positions back changes (log scale). The
    figure shows inline when a notebook cell returns it (mambaft.plots.new_figure)."""
    from mambaft.plots import new_figure
    fig = new_figure(figsize=(8, 3.2), layout="constrained")
    ax = fig.subplots()
    ks = list(range(1, len(rf["rel_change"]) + 1))
    ax.semilogy(ks, [max(c, 1e-18) for c in rf["rel_change"]], marker="o", ms=3)
    ax.axvline(rf["receptive_field"] - 0.5, color="grey", ls="--", lw=1)
    ax.set(xlabel="k: position of the changed token, counted back from the last one",
           ylabel="relative change of the logits",
           title=f"Measured reach: {rf['receptive_field']} tokens (below 1e-12 = no effect at all)")
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def data_summary(stats: dict, plan_course: dict, plan_gpu: dict) -> dict:
    """The numbers of notebook 01: rows, tokens, trained share, epochs under both plans."""
    phases = stats["phases"] if "phases" in stats else {"main": stats}
    out: dict = {"strategy": stats.get("strategy"), "phases": {}}
    for name, st in phases.items():
        t = st["totals"]
        out["phases"][name] = {
            "mode": st.get("mode"), "train_rows": t["train_rows"], "val_rows": t["val_rows"],
            "train_tokens": t["train_tokens"], "trained_tokens": t["train_trained_tokens"],
            "trained_fraction": t["train_trained_tokens"] / max(1, t["train_tokens"]),
            "truncated": t["truncated"], "bad_rows": t["bad_rows"],
            "sources": {s: v["train_rows"] for s, v in st["sources"].items()}}
    out["epochs_course"] = plan_course["epochs_per_source"]
    out["epochs_plan"] = plan_gpu["epochs_per_source"]
    out["warnings_course"] = plan_course["warnings"]
    out["warnings_plan"] = plan_gpu["warnings"]
    return out


def smoke_summary(res: dict, sweep: Optional[dict], table, worked: Optional[dict] = None) -> dict:
    """The numbers of notebook 02: the step worked by hand (course.worked_summary), the short run,
    the sweep and the first generations."""
    losses = res.get("losses") or []
    return {"worked": worked, "steps": res.get("steps"), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None, "losses": losses, "final": res.get("final"),
            "val_loss": res.get("val_loss"),
            "best_lr": sweep["best_lr"] if sweep else None, "sweep_scores": sweep["scores"] if sweep else None,
            "generations": table.records()}


def finetune_summary(cfg, run: PathLike, result: dict, cmd: Sequence[str], num_processes: int) -> dict:
    """The numbers of notebook 03, and whether this kernel touched CUDA (it must not)."""
    torch = sys.modules.get("torch")
    cuda = bool(torch is not None and torch.cuda.is_initialized())
    losses = result.get("losses") or []
    phases = {}
    for d in phase_dirs(cfg, run):
        if (d / "result.json").is_file():
            r = json.loads((d / "result.json").read_text(encoding="utf-8"))
            phases[d.name] = {k: r.get(k) for k in ("steps", "val_loss", "best_val_loss", "final")}
    return {"steps": result.get("steps"), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None, "val_loss": result.get("val_loss"),
            "best_checkpoint": result.get("best_checkpoint"), "final": result.get("final"),
            "checkpoints": [str(p) for _, p in checkpoints(cfg, run)], "phases": phases,
            "num_processes": num_processes, "command": " ".join(map(str, cmd)),
            "torch_in_kernel": torch is not None, "cuda_in_kernel": cuda}


def choice_note(choice) -> str:
    """What notebook 04 prints about the checkpoint it evaluates, and why (one line per candidate)."""
    lines = [f'"fine-tuned" is the step-{choice.step} checkpoint ({choice.rule}): {choice.reason}',
             "  (numbers of the selection split's questions, the rows that choose; the test split and the "
             "probes below chose nothing)"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines += [f"  step {t['step']:>6}: val loss {fmt(t['val_loss'])}  stop {fmt(t['stop'])}  rep_3 {fmt(t['rep_3'])}"
              f"  distinct {fmt(t.get('distinct'))}  bare {fmt(t.get('bare'))}  useful {fmt(t.get('useful'))}"
              f"  score {fmt(t['score'])}{'  <- chosen' if t['step'] == choice.step else ''}"
              for t in choice.table]
    return "\n".join(lines)


def probe_behaviour_by_lang(results: Sequence[dict]) -> dict:
    """{lang: {"stop_rate", "rep_3", "distinct_replies", "bare_rate", "pass_rate", "n"}} over the probe
    replies of one language (the specialized course is held to its bounds on the EN and on the FR
    probes separately). rep_3 is None when no reply held a 3-gram (too short to measure)."""
    import statistics

    from mambaft.evaluate.metrics import reply_quality, repeated_ngram_rate
    out = {}
    for lang in sorted({r.get("lang") for r in results if r.get("lang")}):
        rs = [r for r in results if r.get("lang") == lang]
        answers = [r.get("answer") or "" for r in rs]
        reps = [x for x in (repeated_ngram_rate(a, 3) for a in answers) if x is not None]
        q = reply_quality([r.get("id") for r in rs], answers, [not r.get("hit_limit") for r in rs])
        out[lang] = {"stop_rate": 1.0 - sum(bool(r.get("hit_limit")) for r in rs) / len(rs),
                     "rep_3": statistics.fmean(reps) if reps else None,
                     "distinct_replies": q["distinct_replies"], "bare_rate": q["bare_rate"],
                     "pass_rate": sum(bool(r.get("passed")) for r in rs) / len(rs), "n": len(rs)}
    return out


def behaviour_table(rows: dict) -> str:
    """One line per model: how its replies end, loop, differ and say something (on the split named in
    each line), then its probes, overall and per language."""
    f = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    lines = []
    for name, r in rows.items():
        langs = "  ".join(f"{lang}: stop {f(b['stop_rate'])} rep_3 {f(b['rep_3'])} pass {f(b['pass_rate'])}"
                          for lang, b in (r.get("probes_by_lang") or {}).items())
        lines.append(f"{name:>14} [{r.get('replies_split') or '-'}, {r.get('replies') or 0} replies]: "
                     f"stop {f(r['stop_rate'])}  rep_3 {f(r['rep_3'])}  distinct {f(r.get('distinct_replies'))}  "
                     f"bare {f(r.get('bare_rate'))}  words {f(r.get('mean_words'), 1)}  tokens "
                     f"{f(r['mean_new_tokens'], 1)}  end token {f(r['end_token_rate'])}\n"
                     f"{'':>14} [probes]: passed {f(r['probe_pass_rate'])}  | {langs}")
    return "\n".join(lines)


# Notebook 04's main table: the 8 columns a reader decides on, (header, summary-row key, digits); the
# other columns (bits/byte, BLEU/chrF, p(end), benchmarks, ...) stay in report.md and summary.json.
MAIN_COLUMNS = (("replies from", "replies_split", None), ("probes passed", "probe_pass_rate", 2),
                ("stop", "stop_rate", 2), ("rep_3", "rep_3", 3), ("distinct", "distinct_replies", 2),
                ("bare", "bare_rate", 2), ("held-out ppl", "text_ppl", 1))


def main_table(rows: dict) -> str:
    """The models side by side on the numbers the verdict reads (MAIN_COLUMNS), as a markdown table;
    rep_3 reads "unmeasured" when no reply held a 3-gram (too short is not a perfect 0)."""
    def cell(r, key, digits):
        v = r.get(key)
        if key == "text_ppl":   # {text set: ppl}: one number, or one per set
            v = {k: x for k, x in (v or {}).items() if x is not None}
            return "-" if not v else (f"{next(iter(v.values())):.{digits}f}" if len(v) == 1 else
                                      ", ".join(f"{k} {x:.{digits}f}" for k, x in v.items()))
        if v is None:
            return "unmeasured" if key == "rep_3" else "-"
        return str(v) if digits is None else f"{v:.{digits}f}"
    lines = ["| model | " + " | ".join(h for h, _, _ in MAIN_COLUMNS) + " |", "|---" * (len(MAIN_COLUMNS) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cell(r, k, d) for _, k, d in MAIN_COLUMNS) + " |" for name, r in rows.items()]
    return "\n".join(lines) + "\n\nBetter: probes passed, stop, distinct higher; rep_3, bare lower; held-out ppl " \
        "lower (forgetting). Every other column: `report.md`; every number: `summary.json`.\n"


# Which rows gave which number of a model's summary row (summary.json says it beside the numbers).
_TEST = "test split: held-out validation questions that chose nothing (each model's replies_split)"
SPLITS = {
    **{k: _TEST for k in ("stop_rate", "limit_rate", "end_token_rate", "stop_string_rate", "rep_3", "too_short_3",
                          "distinct_replies", "bare_rate", "mean_words", "mean_new_tokens", "bleu", "chrf",
                          "instruction_ppl")},
    **{k: "probes: the fixed prompts of mambaft.evaluate.probes" for k in ("probe_pass_rate", "probe_by_kind",
                                                                          "probes_by_lang", "probe_replies")},
    "p_end_mean": "fixed complete answers (mambaft.evaluate.metrics.COMPLETE_ANSWERS)",
    "text_ppl": "held-out plain text (wiki_en, wiki_fr)",
    "chosen": "selection split: the val questions that chose the checkpoint, never reported as a result",
}


def evaluation_summary(results: Sequence[dict]) -> dict:
    """Per model: how replies ended, looped, differed (on the split in `replies_split`), p(end), probe
    pass rates, BLEU, perplexities."""
    rows = {}
    for r in results:
        deg, probes = r.get("degeneration") or {}, (r.get("probes") or {}).get("summary") or {}
        pdeg = (r.get("probes") or {}).get("degeneration") or {}
        ans, ppl = r.get("answers") or {}, r.get("perplexity") or {}
        limit, plimit = deg.get("limit_rate"), pdeg.get("limit_rate")
        rows[r["name"]] = {
            "replies_split": deg.get("split"), "replies": deg.get("replies"),
            "end_token_rate": deg.get("end_token_rate"), "stop_string_rate": deg.get("stop_string_rate"),
            "limit_rate": limit, "stop_rate": None if limit is None else 1.0 - limit,
            "mean_new_tokens": deg.get("mean_new_tokens"), "rep_3": deg.get("rep_3"),
            "too_short_3": deg.get("too_short_3"), "distinct_replies": deg.get("distinct_replies"),
            "bare_rate": deg.get("bare_rate"), "mean_words": deg.get("mean_words"),
            "p_end_mean": (r.get("end_token") or {}).get("mean"),
            "probe_pass_rate": probes.get("pass_rate"), "probe_by_kind": probes.get("by_kind"),
            "probe_replies": {"stop_rate": None if plimit is None else 1.0 - plimit, "rep_3": pdeg.get("rep_3"),
                              "distinct_replies": pdeg.get("distinct_replies"), "bare_rate": pdeg.get("bare_rate"),
                              "n": pdeg.get("replies")},
            "bleu": ans.get("bleu"), "chrf": ans.get("chrf"),
            "instruction_ppl": (ppl.get("instruction") or {}).get("all", {}).get("ppl"),
            "probes_by_lang": probe_behaviour_by_lang((r.get("probes") or {}).get("results") or []),
            "text_ppl": {k: v.get("ppl") for k, v in (ppl.get("text") or {}).items() if isinstance(v, dict)},
            "errors": r.get("errors") or {}}
    return rows


def verdict(rows: dict, strategy: str, model: str = "fine-tuned", base: str = "base") -> dict:
    """The verdict of notebook 04 from the bounds (mambaft.evaluate.bounds, the same rules as
    `mambaft ranges`): {"checks": [Check as dict], "verdict": one line, "text": the lines to print}."""
    from dataclasses import asdict

    from mambaft.course.ranges import checks, flat_record
    from mambaft.evaluate.bounds import verdict as one_line

    rec = flat_record(rows[model], rows.get(base), strategy)
    cs = checks(rec)
    text = [f'"{model}" against the bounds ({rec.get("replies_split") or "no"} split\'s replies; probes vs {base}):']
    text += ["  " + c.line() for c in cs] + [f"=> {model} {one_line(cs)}"]
    ok = {c.rule: c.ok for c in cs}
    if ok.get("stops") and not (ok.get("distinct replies") and ok.get("not bare")):
        text.append("   It learned the FORMAT of a reply (it stops) but not to answer: its replies repeat or are "
                    "bare. Do not call this run a success.")
    return {"checks": [asdict(c) for c in cs], "verdict": one_line(cs), "text": "\n".join(text)}


def final_summary(rows: dict, table, context, files: dict, choice=None, strategy: Optional[str] = None) -> dict:
    """The numbers of notebook 04: per model, the headline comparisons, which checkpoint is
    "fine-tuned" and why, which split gave each number, and (with `strategy`) the verdict."""
    pick = lambda key: {name: r[key] for name, r in rows.items()}  # noqa: E731
    chosen = None if choice is None else {"step": choice.step, "path": str(choice.path), "rule": choice.rule,
                                          "reason": choice.reason, "split": "selection",
                                          "candidates": choice.table}
    out = {"models": rows, "chosen": chosen, "splits": SPLITS, "stop_rate": pick("stop_rate"), "rep_3": pick("rep_3"),
           "distinct_replies": pick("distinct_replies"), "bare_rate": pick("bare_rate"),
           "mean_words": pick("mean_words"),
           "mean_new_tokens": pick("mean_new_tokens"), "end_token_rate": pick("end_token_rate"),
           "probe_pass_rate": pick("probe_pass_rate"), "p_end_mean": pick("p_end_mean"),
           "bleu": pick("bleu"), "answers": table.records(),
           "context": context.summary if context is not None else None, "files": files}
    if strategy is not None and "fine-tuned" in rows:
        v = verdict(rows, strategy)
        out["verdict"] = {"checks": v["checks"], "verdict": v["verdict"]}
    return out
