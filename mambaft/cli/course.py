"""`mambaft course`: run the five notebooks headless with papermill, one strategy, one run folder.

    mambaft course                                   # the demo: strategy quick on the demo base (CPU)
    mambaft course --strategy smoke --out /tmp/c     # tiny steps, for tests
    mambaft course --only 04_evaluation              # re-run one notebook of outputs/quick

The runner is mambaft.course.runner; the notebooks' helpers are in mambaft.course.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from mambaft.course.runner import CourseError, run_course


def _command_line(argv) -> str:
    """The command as typed, with the ISA caps that were set (they change the run's CPU class)."""
    import shlex
    args = list(sys.argv[1:] if argv is None else argv)
    env = " ".join(f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
                   if k in os.environ)
    return (env + " " if env else "") + "mambaft course " + " ".join(shlex.quote(a) for a in args)


def main(argv=None) -> int:
    from mambaft.config import STRATEGIES

    ap = argparse.ArgumentParser(prog="mambaft course", description=__doc__.splitlines()[0])
    ap.add_argument("--strategy", choices=STRATEGIES, default="quick")
    ap.add_argument("--base", default="", help="original .pt or model folder (default: the demo base)")
    ap.add_argument("--out", default="outputs", help="parent folder of the run folder")
    ap.add_argument("--run-name", help="run folder name (default: the strategy)")
    ap.add_argument("--only", action="append", default=[], help="run only this notebook (repeatable)")
    ap.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE",
                    help="a notebook parameter, e.g. --set MAX_STEPS=300 (value read as JSON)")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    params = {}
    for item in a.set:
        k, sep, v = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: expected PARAM=VALUE")
        try:
            params[k] = json.loads(v)
        except json.JSONDecodeError:
            params[k] = v
    try:
        res = run_course(a.strategy, a.base, a.out, run_name=a.run_name, only=a.only, params=params,
                         progress=not a.no_progress, command=_command_line(argv))
    except CourseError as e:
        print(f"mambaft course: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as e:
        print(f"mambaft course: {e}", file=sys.stderr)
        return 2
    print(f"[course] all {len(res['notebooks'])} notebooks ran in {res['total_seconds'] / 60:.1f} min; "
          f"results in {res['run_dir']}")
    return 0
