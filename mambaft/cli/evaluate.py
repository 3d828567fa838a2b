"""`mambaft evaluate`: measure one model: probes, degeneration, end token, perplexity, BLEU/chrF, benchmarks.

    mambaft evaluate --model PATH [--data DIR] [--out DIR] [--limit N] [--reference]
    mambaft evaluate --model smollm2 --out runs/eval/smollm2          # the reference row alone

`--data` is a prepared dataset folder (`mambaft prepare --out DIR`: a DatasetDict with a `val`
split; only its TEST rows by default, `--heldout`: the selection rows chose the checkpoint). Without it,
instruction perplexity and BLEU/chrF are left out. `--limit N` caps every part
(validation rows, generated answers, benchmark items, held-out documents) for quick runs.
The library call is `mambaft.evaluate.suite.evaluate_model(path_or_model, ...) -> dict`.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from mambaft.evaluate.benchmarks import BENCHMARKS
from mambaft.evaluate.probes import DEFAULT_MAX_NEW_TOKENS
from mambaft.evaluate.suite import RESULTS_FILE, TEXT_SETS, evaluate_model, format_summary
from mambaft.generate import MAX_NEW


def build_parser(prog: str = "mambaft evaluate", one_model: bool = True) -> argparse.ArgumentParser:
    """The evaluation options, shared by `mambaft evaluate` (--model) and `mambaft compare`."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    if one_model:
        p.add_argument("--model", required=True, help="original .pt, mambaft model folder, or 'smollm2'")
    p.add_argument("--data", help="prepared dataset folder (its 'val' split)")
    p.add_argument("--heldout", default="test", choices=["test", "selection", "all"],
                   help="which val rows --data contributes: test (chose nothing; default), selection "
                        "(chose the checkpoint), all")
    p.add_argument("--out", help="folder for results.json")
    p.add_argument("--name", help="label in reports (default: the folder/file name)")
    p.add_argument("--limit", type=int, help="cap every part at N items (quick runs)")
    p.add_argument("--max-new", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="tokens per generated answer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bench", nargs="*", default=list(BENCHMARKS), help=f"benchmarks ({', '.join(BENCHMARKS)}); none: skip")
    p.add_argument("--bench-limit", type=int, default=200, help="items per benchmark")
    p.add_argument("--bench-source", default="auto", help="auto | offline | hub")
    p.add_argument("--text", nargs="*", default=list(TEXT_SETS), help="held-out text sources; none: skip")
    p.add_argument("--text-split", default="heldout", choices=["heldout", "train", "all"])
    p.add_argument("--no-probes", action="store_true")
    p.add_argument("--reference", action="store_true", help="also evaluate SmolLM2-135M-Instruct")
    p.add_argument("--device")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--threads", type=int)
    p.add_argument("--strict", action="store_true", help="stop at the first failing part")
    return p


def _names(values: list, flag: str, known=None, p=None) -> list:
    """`--flag none` (or no names) means none; other names must be known (`known`: None, any name)."""
    if [v.lower() for v in values] == ["none"]:
        return []
    unknown = [v for v in values if known is not None and v not in known]
    if unknown:
        p.error(f"{flag} {' '.join(unknown)}: unknown; expected some of {', '.join(known)}, or none")
    return list(values)


def check_args(p: argparse.ArgumentParser, a) -> None:
    """What argparse cannot say in its types: counts of at least 1, 'none' for the name lists."""
    for flag, value in (("--limit", a.limit), ("--bench-limit", a.bench_limit)):
        if value is not None and value < 1:
            p.error(f"{flag} {value}: expected at least 1 item (leave {flag} out for the default)")
    if not 1 <= a.max_new <= MAX_NEW:
        p.error(f"--max-new {a.max_new}: expected 1 to {MAX_NEW:,} new tokens")
    a.bench = _names(a.bench, "--bench", BENCHMARKS, p)
    a.text = _names(a.text, "--text")


def kwargs_from_args(a) -> dict:
    return dict(data=a.data, limit=a.limit, max_new_tokens=a.max_new, seed=a.seed, probes=not a.no_probes,
                benchmarks=a.bench, bench_limit=a.bench_limit, bench_source=a.bench_source, text_sets=a.text,
                text_split=a.text_split, heldout=a.heldout,
                device=a.device, precision=a.precision, strict=a.strict)


def main(argv: Optional[list] = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    check_args(p, a)
    from mambaft.runtime import seed_everything, set_threads
    set_threads(a.threads)
    seed_everything(a.seed)
    kw = kwargs_from_args(a)
    out = Path(a.out) if a.out else None
    res = evaluate_model(a.model, out=out, name=a.name, **kw)
    print(format_summary(res))
    failed = bool(res["errors"])
    if a.reference:
        ref = evaluate_model("smollm2", out=out / "reference" if out else None, **kw)
        print(format_summary(ref))
        failed = failed or bool(ref["errors"])
    if out:
        print(f"wrote {out / RESULTS_FILE}")
    return 1 if failed else 0
