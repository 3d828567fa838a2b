"""The course's notebook parameters, validated where they enter (issue 28): before a kernel starts,
not as a silent default deep inside a notebook (MAX_STEPS=-5 used to mean the preset's steps,
NUM_PROCESSES=0 was launched).

    check_params(params, strategy)            -> the params, or CourseParamError naming the parameter
    check_same_run(run_dir, params)           -> refuse a rerun into a run folder with other parameters

The ranges are those the notebooks' parameter cells give in their comments (one table, PARAMS).
`mambaft course` (mambaft/cli/course.py) and the runner call these; a test checks the table against
the notebooks' parameter cells so the two never drift apart.

    python -m pytest -q tests/test_course_params.py
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Optional, Union

from mambaft.errors import UserError

PathLike = Union[str, Path]
COURSE_RECORD = "course.json"

# name: (type, low, high); None = unbounded; (str, choices) for a closed set
PARAMS = {
    "STRATEGY": (str, ("quick", "conversational", "specialized", "smoke")),
    "BASE": (str, None),
    "RUN_DIR": (str, None),
    "SEED": (int, 0, None),
    "MAX_NEW_TOKENS": (int, 8, 256),     # 02 allows 8, 00 and 04 say 16: the widest is checked
    "KNOW_TOKENS": (int, 4, 64),
    "PREVIEW_ROWS": (int, 0, 12),
    "SMOKE_STEPS": (int, 2, 200),
    "SWEEP_STEPS": (int, 0, 100),
    "WORKED_ROWS": (int, 1, 64),
    "NUM_PROCESSES": (int, 0, 64),       # 0: one per visible GPU (notebook 03), 1 on a CPU
    "MAX_STEPS": (int, 0, 100_000),      # 0: the strategy's steps
    "ACCELERATE_CONFIG": (str, None),
    "ESTIMATE_STEPS": (int, 0, 10),
    "EVAL_LIMIT": (int, 2, 500),
    "BENCH_LIMIT": (int, 0, 1000),
    "CHAT": (bool, None),
    "CONTEXT_WINDOWS": (int, 0, 256),
}
# parameters that only change what is shown or measured afterwards: a rerun may change them freely
PRESENTATION = frozenset({"PREVIEW_ROWS", "MAX_NEW_TOKENS", "KNOW_TOKENS", "WORKED_ROWS", "ESTIMATE_STEPS",
                          "EVAL_LIMIT", "BENCH_LIMIT", "CHAT", "CONTEXT_WINDOWS"})


class CourseParamError(UserError, ValueError):
    """A course parameter out of its range or type, or in conflict with the command's own flag."""


def check_param(name: str, value):
    """`value` if it is a valid `name`, else CourseParamError saying what is allowed."""
    if name not in PARAMS:
        raise CourseParamError(f"{name}: not a course parameter (known: {', '.join(sorted(PARAMS))})")
    kind, *rng = PARAMS[name]
    if kind is bool:
        if not isinstance(value, bool):
            raise CourseParamError(f"{name}={value!r}: expected true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CourseParamError(f"{name}={value!r}: expected an integer")
        low, high = rng
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"{low}..{high}" if high is not None else f">= {low}"
            raise CourseParamError(f"{name}={value}: expected {span}")
        return value
    if not isinstance(value, str):
        raise CourseParamError(f"{name}={value!r}: expected text")
    choices = rng[0]
    if choices is not None and value not in choices:
        raise CourseParamError(f"{name}={value!r}: expected one of {', '.join(choices)}")
    return value


def check_params(params: Mapping, strategy: Optional[str] = None, run_dir: Optional[PathLike] = None) -> dict:
    """Every parameter checked; STRATEGY / RUN_DIR given by --set must agree with the command's own
    --strategy / run folder (else the folder says one strategy and holds another's run)."""
    out = {k: check_param(k, v) for k, v in params.items()}
    if strategy is not None and "STRATEGY" in out and out["STRATEGY"] != strategy:
        raise CourseParamError(f"--set STRATEGY={out['STRATEGY']} disagrees with --strategy {strategy}: "
                               "give the strategy once, with --strategy")
    if run_dir is not None and "RUN_DIR" in out and Path(out["RUN_DIR"]) != Path(run_dir):
        raise CourseParamError(f"--set RUN_DIR={out['RUN_DIR']} disagrees with the run folder {run_dir} "
                               "(--out/--run-name): give it once, with --out and --run-name")
    return out


def check_same_run(run_dir: PathLike, params: Mapping, *, resume_anyway: bool = False) -> list[str]:
    """A rerun into a run folder that holds a course run: the parameters that shape its results
    (SEED, STRATEGY, BASE, MAX_STEPS, NUM_PROCESSES, ...) must be the recorded ones, or the folder's
    course.json would describe one run while its notebooks hold another. Returns the differences
    (said by the caller); raises CourseParamError for any outside PRESENTATION unless resume_anyway."""
    record = Path(run_dir) / COURSE_RECORD
    if not record.is_file():
        return []
    try:
        saved = json.loads(record.read_text(encoding="utf-8")).get("params") or {}
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        if resume_anyway:
            return [f"{record} unreadable ({type(e).__name__})"]
        raise CourseParamError(f"{record}: unreadable ({type(e).__name__}), so this rerun cannot be checked "
                               "against the run's parameters; use another --run-name, or --resume-anyway") from e
    diffs = [f"{k} {saved.get(k)!r} -> {params.get(k)!r}" for k in sorted(set(saved) | set(params))
             if k in params and k in saved and saved[k] != params[k]]
    serious = [d for d in diffs if d.split(" ", 1)[0] not in PRESENTATION]
    if serious and not resume_anyway:
        raise CourseParamError(f"{run_dir}: holds a course run with other parameters: " + "; ".join(serious) +
                               ". Use another --run-name (or --out), or --resume-anyway to continue it as it is")
    return diffs
