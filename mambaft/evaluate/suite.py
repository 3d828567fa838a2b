"""Evaluate one model: probes, degeneration, end token, perplexity, BLEU/chrF, benchmarks -> JSON.

    mambaft evaluate --model PATH [--data DIR] [--out DIR] [--limit N] [--reference]
    mambaft evaluate --model smollm2 --out runs/eval/smollm2          # the reference row alone

`--data` is a prepared dataset folder (`mambaft prepare --out DIR`: a DatasetDict with a `val`
split). Without it, instruction perplexity and BLEU/chrF are left out. Of the val split, only the TEST
rows are scored by default (`heldout`, mambaft.data.heldout): the selection rows chose the checkpoint. `--limit N` caps every part
(validation rows, generated answers, benchmark items, held-out documents) for quick runs.
Library call for the notebooks: `evaluate_model(path_or_model, ...) -> dict`.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Optional, Sequence, Union

from .. import durable
from ..data.heldout import TEST, heldout_rows
from .benchmarks import BENCHMARKS, result_line, run_benchmarks
from .lm import load_lm
from .metrics import (answer_scores, degeneration, end_token_probability, heldout_perplexity,
                      instruction_perplexity, validation_pairs)
from .probes import DEFAULT_MAX_NEW_TOKENS, PROBES, score_probes, summarize_probes

RESULTS_FILE = "results.json"
TEXT_SETS = ("wiki_en", "wiki_fr")


def load_val_split(data):
    """A prepared dataset folder / DatasetDict / Dataset -> its validation Dataset."""
    import datasets

    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such prepared dataset folder (mambaft prepare --out DIR)")
        try:
            data = datasets.load_from_disk(str(path))
        except Exception as e:
            raise ValueError(f"{path}: not a dataset written by save_to_disk ({e})") from e
    if isinstance(data, datasets.DatasetDict):
        for split in ("val", "validation", "test"):
            if split in data:
                return data[split]
        raise ValueError(f"prepared dataset has splits {list(data)}: expected 'val'")
    return data


def _data_seed(data, default: int) -> int:
    """The seed a prepared folder was split with (its stats.json), else `default`: the held-out roles
    of a val split without a `heldout` column are recomputed from it."""
    if isinstance(data, (str, Path)):
        stats = Path(data) / "stats.json"
        if stats.is_file():
            seed = json.loads(stats.read_text(encoding="utf-8")).get("seed")
            if isinstance(seed, int):
                return seed
    return default


def heldout_split(data, role: str = TEST, seed: int = 0):
    """A prepared dataset (folder, DatasetDict or Dataset) -> the val rows of one held-out role
    (TEST, SELECTION or "all"), in stratified order (each source at its share of any prefix)."""
    val = load_val_split(data)
    return val.select(heldout_rows(val, role, _data_seed(data, seed)))


def json_safe(o):
    """JSON-safe: NaN and inf -> None, tuples -> lists, paths -> str, numpy/torch scalars -> numbers."""
    if hasattr(o, "item") and callable(o.item) and not isinstance(o, (dict, list, tuple, str)):
        o = o.item()
    if isinstance(o, float):
        return None if math.isnan(o) or math.isinf(o) else o
    if isinstance(o, dict):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    return o


def evaluate_model(path_or_model, *, data=None, out: Union[str, Path, None] = None, name: Optional[str] = None,
                   limit: Optional[int] = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, seed: int = 0,
                   probes: bool = True, benchmarks: Sequence[str] = tuple(BENCHMARKS),
                   bench_limit: Optional[int] = 200, bench_source: Union[str, dict] = "auto",
                   text_sets: Sequence[str] = TEXT_SETS, text_docs: int = 50, text_tokens: int = 20_000,
                   text_split: str = "heldout",
                   window: int = 256, val_rows: Optional[int] = 500, answer_pairs: int = 100,
                   device: Optional[str] = None, precision: str = "fp32", progress: bool = True,
                   strict: bool = False, heldout: str = TEST) -> dict:
    """Measure one model and return (and, with `out`, write to out/results.json) a dict:

        model         what was evaluated (path, step, architecture, parameters)
        probes        {"results": [one dict per probe], "summary": pass rates,
                       "degeneration": the probe replies' degeneration (as below)}
        degeneration  over the `heldout` split's replies (the probes' when there is no `data`; its
                      "split" says which): rep_2/3/4, distinct_1/2, limit / end-token / stop-string
                      rates, reply quality (distinct and bare replies, words per reply)
        end_token     p(end token | complete answer)
        perplexity    {"instruction": per source (needs `data`), "text": {set: ppl, bpb}}
        answers       BLEU and chrF of greedy answers to the `heldout` split's questions against their
                      answers (needs `data`), and every reply
        benchmarks    {name: acc, acc_norm, n, chance}
        errors        {part: message} for parts that could not run (strict=True raises instead)

    `limit` caps val_rows, answer_pairs, bench_limit and text_docs at once (quick runs). `heldout`:
    which val rows `data` contributes: "test" (the default: rows that chose nothing), "selection"
    (the rows that chose the checkpoint) or "all"."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit!r}: expected at least 1 item per part (None: no cap)")
    if limit is not None:
        val_rows, answer_pairs = min(val_rows or limit, limit), min(answer_pairs, limit)
        bench_limit, text_docs = min(bench_limit or limit, limit), min(text_docs, limit)
    t_start = time.perf_counter()
    lm = load_lm(path_or_model, name=name, device=device, precision=precision)
    if name:
        lm.name = name
    settings = dict(limit=limit, max_new_tokens=max_new_tokens, seed=seed, bench_limit=bench_limit,
                    text_sets=list(text_sets), text_docs=text_docs, text_tokens=text_tokens,
                    text_split=text_split, window=window, val_rows=val_rows, answer_pairs=answer_pairs,
                    precision=precision, data=str(data) if isinstance(data, (str, Path)) else None,
                    heldout=heldout if data is not None else None)
    res: dict = {"name": lm.name, "model": lm.describe(), "errors": {}, "timing_s": {}, "settings": settings}

    def part(key: str, fn):
        t0 = time.perf_counter()
        if progress:
            print(f"[evaluate] {lm.name}: {key} ...", file=sys.stderr, flush=True)
        try:
            return fn()
        except Exception as e:  # one failing part must not lose the others' results
            if strict:
                raise
            res["errors"][key] = f"{type(e).__name__}: {e}"
            print(f"[evaluate] {lm.name}: {key} failed: {res['errors'][key]}", file=sys.stderr, flush=True)
            return None
        finally:
            res["timing_s"][key] = round(time.perf_counter() - t0, 2)

    probe_replies, test_replies = [], []
    if probes:
        def _probes():
            rs = lm.replies([p.messages for p in PROBES], max_new_tokens=max_new_tokens, seed=seed)
            probe_replies.extend(rs)
            results = score_probes(PROBES, rs)
            return {"results": results, "summary": summarize_probes(results), "degeneration": degeneration(rs)}
        res["probes"] = part("probes", _probes)
    res["end_token"] = part("end_token", lambda: end_token_probability(lm))

    res["perplexity"] = {}
    val = None
    if data is not None:
        val = part("data", lambda: heldout_split(data, heldout, seed))
    if val is not None:
        settings["heldout_rows"] = len(val)
        res["perplexity"]["instruction"] = part(
            "instruction_perplexity", lambda: instruction_perplexity(lm, val, val_rows, progress))

        def _answers():
            pairs = validation_pairs(val)[:answer_pairs]
            scores, rs = answer_scores(lm, pairs, max_new_tokens, seed, progress)
            test_replies.extend(rs)
            scores["split"] = heldout
            scores["examples"] = [{"question": h[-1]["content"], "reference": ref, "answer": r.answer}
                                  for (h, ref), r in list(zip(pairs, rs))[:10]]
            # every reply, so a run folder can be re-judged later without the model
            scores["replies"] = [{"question": h[-1]["content"], "answer": r.answer, "stopped_by": r.stopped_by}
                                 for (h, _), r in zip(pairs, rs)]
            return scores
        res["answers"] = part("answers", _answers)
    if text_sets:
        res["perplexity"]["text"] = part("text_perplexity", lambda: heldout_perplexity(
            lm, text_sets, text_docs, window, text_tokens, progress, text_split))
    if test_replies:
        res["degeneration"] = {"split": heldout, **degeneration(test_replies)}
    elif probe_replies:
        res["degeneration"] = {"split": "probes", **degeneration(probe_replies)}
    if benchmarks:
        res["benchmarks"] = part("benchmarks", lambda: run_benchmarks(lm, benchmarks, bench_limit,
                                                                      bench_source, progress))
    res["timing_s"]["total"] = round(time.perf_counter() - t_start, 2)
    res = json_safe(res)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        durable.write_atomic(out / RESULTS_FILE, json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    return res


def format_summary(res: dict) -> str:
    """A few lines for the terminal."""
    lines = [f"== {res['name']}"]
    if res.get("probes"):
        s = res["probes"]["summary"]
        lines.append(f"probes: {s['passed']}/{s['total']} passed  " +
                     "  ".join(f"{k} {v:.0%}" for k, v in s["by_kind"].items()))
    if res.get("degeneration"):
        d = res["degeneration"]
        f = lambda v, p=3: "unmeasured" if v is None else f"{v:.{p}f}"  # noqa: E731
        lines.append(f"replies ({d.get('split')}, {d['replies']}): rep_3 {f(d['rep_3'])}  distinct replies "
                     f"{f(d.get('distinct_replies'), 2)}  bare {f(d.get('bare_rate'), 2)}  words/reply "
                     f"{f(d.get('mean_words'), 1)}  distinct_2 {f(d['distinct_2'])}  hit limit {d['limit_rate']:.0%}  "
                     f"ended by end token {d['end_token_rate']:.0%}")
    if res.get("end_token"):
        lines.append(f"p(end | complete answer): mean {res['end_token']['mean']:.3g}")
    ppl = res.get("perplexity") or {}
    if ppl.get("instruction"):
        a = ppl["instruction"]["all"]
        lines.append(f"instruction perplexity: {a['ppl']:.2f} ({a['tokens']} tokens, {a['bpb']:.3f} bits/byte)")
    for k, v in (ppl.get("text") or {}).items():
        lines.append(f"held-out {k}: perplexity {v['ppl']:.2f}, {v['bpb']:.3f} bits/byte ({v['tokens']} tokens)")
    if res.get("answers"):
        lines.append(f"BLEU {res['answers']['bleu']:.2f}  chrF {res['answers']['chrf']:.2f} (n={res['answers']['n']})")
    for k, v in (res.get("benchmarks") or {}).items():
        lines.append(f"{k}: {result_line(v)}")
    for k, v in res.get("errors", {}).items():
        lines.append(f"ERROR in {k}: {v}")
    return "\n".join(lines)
