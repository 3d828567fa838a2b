"""Compare any list of models side by side: a table, plots and a report (markdown + HTML) in a run
folder, with every probe's answers next to each other.

Each entry is a checkpoint (evaluated now, results kept under OUT/models/NAME/results.json and read
again while its bytes, the settings and the data are unchanged: mambaft.evaluate.cache), a
results.json written earlier by `mambaft evaluate`, or a folder holding one. `--reference` adds
SmolLM2-135M-Instruct as the last column.

    mambaft compare base.pt runs/ckpt-5000 runs/ckpt-10000 runs/final --out runs/compare [--limit 20]
Library call for the notebooks: `compare_models(paths, out_dir, ...) -> dict`.
"""
from __future__ import annotations

import csv
import html
import json
import re
from pathlib import Path
from typing import Optional, Sequence, Union

from . import cache
from .benchmarks import result_line
from .intervals import accuracy_interval
from .suite import RESULTS_FILE, evaluate_model

def _get(d: dict, *keys):
    """d[k1][k2]... or None when any level is missing."""
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d


# (key, label, getter, lower is better? / None: not a score) of the comparison table
COLUMNS = [
    ("step", "step", lambda r: _get(r, "model", "step"), None),
    ("probes", "probes passed", lambda r: _get(r, "probes", "summary", "pass_rate"), False),
    ("probes_en", "probes EN", lambda r: _get(r, "probes", "summary", "by_lang", "en"), False),
    ("probes_fr", "probes FR", lambda r: _get(r, "probes", "summary", "by_lang", "fr"), False),
    ("ppl_instr", "instruction ppl", lambda r: _get(r, "perplexity", "instruction", "all", "ppl"), True),
    ("bpb_instr", "instruction bits/byte", lambda r: _get(r, "perplexity", "instruction", "all", "bpb"), True),
    ("bpb_wiki_en", "held-out EN bits/byte", lambda r: _get(r, "perplexity", "text", "wiki_en", "bpb"), True),
    ("bpb_wiki_fr", "held-out FR bits/byte", lambda r: _get(r, "perplexity", "text", "wiki_fr", "bpb"), True),
    # the reply numbers below come from one split, named here: "test" (held-out questions that chose
    # nothing), or "probes" when the model was evaluated without data
    ("replies_from", "replies from", lambda r: _get(r, "degeneration", "split"), None),
    ("rep_3", "repeated 3-grams", lambda r: _get(r, "degeneration", "rep_3"), True),
    ("distinct_replies", "distinct replies", lambda r: _get(r, "degeneration", "distinct_replies"), False),
    ("bare_rate", "bare replies", lambda r: _get(r, "degeneration", "bare_rate"), True),
    ("mean_words", "words/reply", lambda r: _get(r, "degeneration", "mean_words"), None),
    ("distinct_2", "distinct-2", lambda r: _get(r, "degeneration", "distinct_2"), False),
    ("limit_rate", "hit token limit", lambda r: _get(r, "degeneration", "limit_rate"), True),
    ("p_end", "p(end | answer)", lambda r: _get(r, "end_token", "mean"), False),
    ("bleu", "BLEU", lambda r: _get(r, "answers", "bleu"), False),
    ("chrf", "chrF", lambda r: _get(r, "answers", "chrf"), False),
    ("hellaswag", "HellaSwag acc_norm", lambda r: _get(r, "benchmarks", "hellaswag", "acc_norm"), False),
    ("arc_easy", "ARC-Easy acc_norm", lambda r: _get(r, "benchmarks", "arc_easy", "acc_norm"), False),
    ("piqa", "PIQA acc_norm", lambda r: _get(r, "benchmarks", "piqa", "acc_norm"), False),
]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) >= 100 or v == 0 else f"{v:.3f}"
    return str(v)


def load_or_evaluate(entry, out_dir: Path, **eval_kwargs) -> dict:
    """A results dict, a results.json (or a folder holding one), or a checkpoint to evaluate now (or
    whose results under out_dir/models/NAME have the same cache key: mambaft.evaluate.cache)."""
    if isinstance(entry, dict):
        return entry
    p = Path(str(entry))
    if p.is_file() and p.suffix == ".json":
        return json.loads(p.read_text(encoding="utf-8"))
    if p.is_dir() and (p / RESULTS_FILE).is_file() and not (p / "model.safetensors").is_file():
        return json.loads((p / RESULTS_FILE).read_text(encoding="utf-8"))
    if not p.exists() and str(entry).lower() not in ("smollm2", "reference"):
        raise FileNotFoundError(f"{p}: no such checkpoint, model folder or results.json")
    name = eval_kwargs.pop("name", None) or (p.name if p.suffix != ".pt" else f"{p.parent.name}/{p.stem}")
    folder = out_dir / "models" / _slug(name)
    if not p.exists():                      # the reference, downloaded by name: nothing local to hash
        return evaluate_model(entry, out=folder, name=name, **eval_kwargs)
    # the same model bytes, settings and data as the results already there: read them (evaluation.cache)
    key = cache.evaluation_key(p, {"name": name, **{k: v for k, v in eval_kwargs.items() if k != "progress"}})
    hit = cache.cached_results(folder, key)
    if hit is not None:
        return hit
    cache.forget(folder)
    res = evaluate_model(entry, out=folder, name=name, **eval_kwargs)
    cache.remember(folder, key)
    return res


def table_rows(results: Sequence[dict]) -> list:
    return [{"name": r["name"], **{key: get(r) for key, _, get, _ in COLUMNS}} for r in results]


def _used_columns(rows: list) -> list:
    return [c for c in COLUMNS if any(row[c[0]] is not None for row in rows)]


def markdown_table(rows: list) -> str:
    cols = _used_columns(rows)
    lines = ["| model | " + " | ".join(label for _, label, _, _ in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for row in rows:
        lines.append(f"| {row['name']} | " + " | ".join(_fmt(row[c[0]]) for c in cols) + " |")
    arrows = ", ".join(f"{label} {'lower' if low else 'higher'}" for _, label, _, low in cols if low is not None)
    return "\n".join(lines) + f"\n\nBetter: {arrows}.\n\n{SPLITS_NOTE}\n"


# Which held-out rows gave which number (mambaft.data.heldout): the report says it under every table.
SPLITS_NOTE = ("Splits: probes = the fixed probes (mambaft.evaluate.probes); repeated 3-grams, distinct "
               "and bare replies, words/reply, hit token limit, BLEU/chrF and instruction perplexity = the split named in "
               "\"replies from\" (test: held-out validation questions that chose nothing; the selection "
               "split chose the checkpoint and is not reported); held-out bits/byte = held-out plain text. "
               "A bare reply has fewer than 3 words or is a lone option letter; distinct replies = distinct "
               "normalised replies / distinct questions.")


def benchmark_lines(results: Sequence[dict]) -> list:
    """One line per model and benchmark: accuracies with their 95 % intervals and the chance level
    (benchmarks.result_line); the table's bare acc_norm on 30 items cannot say whether it beats chance."""
    return [f"{r['name']}, {b}: {result_line(v)}" for r in results
            for b, v in (_get(r, "benchmarks") or {}).items() if v.get("n")]


def probe_answers(results: Sequence[dict]) -> list:
    """[{id, question, rule, answers: {model: (answer, passed, stopped_by)}}] in probe order."""
    table: dict = {}
    for r in results:
        for p in _get(r, "probes", "results") or []:
            row = table.setdefault(p["id"], {"id": p["id"], "question": p["question"], "rule": p["rule"], "answers": {}})
            row["answers"][r["name"]] = (p["answer"], p["passed"], p["stopped_by"])
    return list(table.values())


# --- plots -----------------------------------------------------------------------------------------
def progress_points(results: Sequence[dict]) -> list:
    """(x, tick label, result) of the across-checkpoints plot, by x.

    Fine-tune checkpoints sit at their optimizer step; the model they started from sits at step 0,
    labelled with its own step: that one counts pretraining (1558 for the demo base) and would put
    the base to the right of fine-tune steps 200 and 300. Results without the "trained" field
    (written before it existed) keep their own steps. Models at the same step (the last checkpoint
    and the final model) are one point."""
    def step(r):
        return _get(r, "model", "step")

    tuned = [r for r in results if _get(r, "model", "trained") == "finetune" and isinstance(step(r), int)]
    if not tuned:
        points = [(step(r), str(step(r)), r) for r in results if isinstance(step(r), int)]
    else:
        kind = _get(tuned[0], "model", "kind")
        base = next((r for r in results if _get(r, "model", "trained") != "finetune"
                     and _get(r, "model", "kind") == kind), None)
        points = [(step(r), str(step(r)), r) for r in tuned]
        if base is not None:
            own = f"\n(pretrain step {step(base)})" if step(base) is not None else "\n(start)"
            points.insert(0, (0, f"0: {base['name']}{own}", base))
    seen, out = set(), []
    for p in sorted(points, key=lambda p: p[0]):
        if p[0] not in seen:
            seen.add(p[0])
            out.append(p)
    return out


def probe_figure(results: Sequence[dict], kinds: Sequence[str]):
    """Probe pass rate by kind: horizontal bars, one group per kind, every value written beside its
    bar (most rates are 0 for a small model: an unlabelled empty bar reads as missing data).
    7 x (1 + 0.3 per bar) inches at 110 dpi stays near a notebook's width (~800 px) at text size 9-10."""
    import matplotlib.pyplot as plt

    names = [r["name"] for r in results]
    n_bars = len(kinds) * len(names)
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.28 * n_bars))
    height = 0.8 / len(names)
    for i, (n, r) in enumerate(zip(names, results)):
        ys = [j + i * height for j in range(len(kinds))]
        vals = [_get(r, "probes", "summary", "by_kind", k) for k in kinds]
        ax.barh(ys, [v or 0 for v in vals], height, label=n)
        for y, v in zip(ys, vals):
            ax.text((v or 0) + 0.01, y, "-" if v is None else f"{v:.2f}", va="center", fontsize=8)
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(kinds))])
    ax.set_yticklabels(list(kinds), fontsize=10)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("pass rate", fontsize=10)
    ax.set_title("Probe pass rate by kind", fontsize=11)
    # below the axes: inside, it covered the value of the longest bar
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(4, len(names)))
    fig.tight_layout()
    return fig


def make_plots(results: Sequence[dict], out: Path) -> list:
    """PNG plots (matplotlib, Agg backend: works headless) -> list of paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in results]
    paths = []

    def bars(groups: dict, title: str, fname: str, ylabel: str, chance: Optional[dict] = None, log=False,
             errors: Optional[dict] = None):
        groups = {g: v for g, v in groups.items() if any(x is not None for x in v)}
        if not groups:
            return
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) * len(names) ** 0.5 + 2), 4))
        width = 0.8 / len(names)
        for i, n in enumerate(names):
            xs = [j + i * width for j in range(len(groups))]
            ys = [v[i] if v[i] is not None else 0 for v in groups.values()]
            ax.bar(xs, ys, width, label=n)
            if errors:   # each bar's 95 % interval: [low, high] -> the distances below and above the bar
                ci = [errors[g][i] or (y, y) for g, y in zip(groups, ys)]
                ax.errorbar(xs, ys, yerr=[[y - c[0] for y, c in zip(ys, ci)], [c[1] - y for y, c in zip(ys, ci)]],
                            fmt="none", ecolor="k", capsize=3, lw=1)
        if chance:
            for j, g in enumerate(groups):
                if chance.get(g) is not None:
                    ax.hlines(chance[g], j - width / 2, j + 0.8 - width / 2, colors="k", linestyles="dashed")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))])
        ax.set_xticklabels(list(groups), rotation=20, ha="right")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        paths.append(out / fname)

    kinds = list(dict.fromkeys(k for r in results for k in (_get(r, "probes", "summary", "by_kind") or {})))
    if kinds:
        fig = probe_figure(results, kinds)
        fig.savefig(out / "probes.png", dpi=110)
        plt.close(fig)
        paths.append(out / "probes.png")
    bars({"instruction": [_get(r, "perplexity", "instruction", "all", "bpb") for r in results],
          **{f"held-out {t}": [_get(r, "perplexity", "text", t, "bpb") for r in results]
             for t in dict.fromkeys(t for r in results for t in (_get(r, "perplexity", "text") or {}))}},
         "Bits per byte (lower is better)", "perplexity.png", "bits/byte")
    bars({"repeated 3-grams": [_get(r, "degeneration", "rep_3") for r in results],
          "distinct-2": [_get(r, "degeneration", "distinct_2") for r in results],
          "distinct replies": [_get(r, "degeneration", "distinct_replies") for r in results],
          "bare replies": [_get(r, "degeneration", "bare_rate") for r in results],
          "hit limit": [_get(r, "degeneration", "limit_rate") for r in results],
          "p(end | answer)": [_get(r, "end_token", "mean") for r in results]},
         "Degeneration and stopping", "degeneration.png", "rate / probability")
    benches = list(dict.fromkeys(b for r in results for b in (_get(r, "benchmarks") or {})))
    bars({b: [_get(r, "benchmarks", b, "acc_norm") for r in results] for b in benches},
         "Benchmarks (acc_norm with its 95 % interval; dashed: chance)", "benchmarks.png", "accuracy",
         chance={b: next((_get(r, "benchmarks", b, "chance") for r in results
                          if _get(r, "benchmarks", b, "chance") is not None), None) for b in benches},
         errors={b: [None if _get(r, "benchmarks", b, "acc_norm") is None else
                     accuracy_interval(_get(r, "benchmarks", b, "acc_norm"), _get(r, "benchmarks", b, "n") or 0)
                     for r in results] for b in benches})
    points = progress_points(results)
    if len(points) >= 2:
        fig, ax = plt.subplots(figsize=(7, 4))
        xs = [x for x, _, _ in points]
        for key, label, get, _ in COLUMNS:
            if key in ("probes", "p_end", "limit_rate", "rep_3", "distinct_replies", "bare_rate"):
                ys = [get(r) for _, _, r in points]
                if any(y is not None for y in ys):
                    ax.plot(xs, [y if y is not None else float("nan") for y in ys], "o-", label=label)
        ax.set_xticks(xs)
        ax.set_xticklabels([t for _, t, _ in points], fontsize=9)
        ax.set_xlabel("fine-tune step" if any("\n" in t for _, t, _ in points) else "step")
        ax.set_title("Across checkpoints")
        ax.legend(fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "progress.png", dpi=110)
        plt.close(fig)
        paths.append(out / "progress.png")
    return paths


# --- reports ---------------------------------------------------------------------------------------
def markdown_report(results: Sequence[dict], rows: list, plots: list) -> str:
    lines = ["# Model comparison", "", markdown_table(rows)]
    if benchmark_lines(results):
        lines += ["## Benchmarks", ""] + [f"- {ln}" for ln in benchmark_lines(results)] + [""]
    errs = [(r["name"], k, v) for r in results for k, v in (r.get("errors") or {}).items()]
    if errs:
        lines += ["Parts that could not run:", ""] + [f"- {n}: {k}: {v}" for n, k, v in errs] + [""]
    lines += [f"![{p.stem}]({p.name})" for p in plots] + ["", "## Probe answers side by side", ""]
    names = [r["name"] for r in results]
    for pr in probe_answers(results):
        lines += [f"### {pr['id']}: {pr['question']}", "", f"Pass rule: {pr['rule']}", "",
                  "| model | answer | pass | stopped by |", "|---|---|---|---|"]
        for n in names:
            if n in pr["answers"]:
                a, ok, stop = pr["answers"][n]
                a = a.replace("|", "\\|").replace("\n", " ")
                lines.append(f"| {n} | {a} | {'PASS' if ok else 'fail'} | {stop} |")
        lines.append("")
    return "\n".join(lines)


def html_report(results: Sequence[dict], rows: list, plots: list) -> str:
    e = html.escape
    cols = _used_columns(rows)
    head = "".join(f"<th>{e(label)}</th>" for _, label, _, _ in cols)
    body = "".join("<tr><td>" + e(r["name"]) + "</td>" + "".join(f"<td>{e(_fmt(r[c[0]]))}</td>" for c in cols)
                   + "</tr>" for r in rows)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Model comparison</title><style>"
             "body{font-family:sans-serif;max-width:1200px;margin:auto} table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top} .pass{background:#dfd}"
             ".fail{background:#fdd}</style></head><body><h1>Model comparison</h1>",
             f"<table><tr><th>model</th>{head}</tr>{body}</table>", f"<p><i>{e(SPLITS_NOTE)}</i></p>"]
    if benchmark_lines(results):
        parts.append("<h2>Benchmarks</h2><ul>" + "".join(f"<li>{e(ln)}</li>" for ln in benchmark_lines(results))
                     + "</ul>")
    parts += [f"<p><img src='{e(p.name)}' alt='{e(p.stem)}'></p>" for p in plots]
    parts.append("<h2>Probe answers side by side</h2>")
    names = [r["name"] for r in results]
    for pr in probe_answers(results):
        parts.append(f"<h3>{e(pr['id'])}: {e(pr['question'])}</h3><p><i>Pass rule: {e(pr['rule'])}</i></p><table>"
                     "<tr><th>model</th><th>answer</th><th>pass</th><th>stopped by</th></tr>")
        for n in names:
            if n in pr["answers"]:
                a, ok, stop = pr["answers"][n]
                cls = "pass" if ok else "fail"
                parts.append(f"<tr class='{cls}'><td>{e(n)}</td><td>{e(a)}</td><td>{'PASS' if ok else 'fail'}</td>"
                             f"<td>{e(stop)}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def compare_models(models: Sequence[Union[str, Path, dict]], out_dir: Union[str, Path],
                   names: Optional[Sequence[str]] = None, reference: bool = False, **eval_kwargs) -> dict:
    """Evaluate (or load) each model and write OUT/{compare.json, table.csv, table.md, report.md,
    report.html, *.png}. Returns {"results", "rows", "files"}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = list(models) + (["smollm2"] if reference else [])
    if names is not None and len(names) != len(models):
        raise ValueError(f"{len(names)} names for {len(models)} models")
    results = []
    for i, entry in enumerate(entries):
        kw = dict(eval_kwargs)
        if names is not None and i < len(names):
            kw["name"] = names[i]
        r = load_or_evaluate(entry, out, **kw)
        if names is not None and i < len(names):
            r = {**r, "name": names[i]}
        results.append(r)
    seen: dict = {}
    for r in results:  # unique column names: "final", "final (2)"
        seen[r["name"]] = seen.get(r["name"], 0) + 1
        if seen[r["name"]] > 1:
            r["name"] = f"{r['name']} ({seen[r['name']]})"
    rows = table_rows(results)
    plots = make_plots(results, out)
    files = {"json": out / "compare.json", "csv": out / "table.csv", "table": out / "table.md",
             "markdown": out / "report.md", "html": out / "report.html"}
    files["json"].write_text(json.dumps({"rows": rows, "results": results}, indent=2, ensure_ascii=False) + "\n",
                             encoding="utf-8")
    with files["csv"].open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["name"] + [c[0] for c in COLUMNS])
        w.writeheader()
        w.writerows(rows)
    files["table"].write_text(markdown_table(rows), encoding="utf-8")
    files["markdown"].write_text(markdown_report(results, rows, plots), encoding="utf-8")
    files["html"].write_text(html_report(results, rows, plots), encoding="utf-8")
    return {"results": results, "rows": rows, "files": {**{k: str(v) for k, v in files.items()},
                                                        "plots": [str(p) for p in plots]}}
