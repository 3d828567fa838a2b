"""`mambaft plan`: what a run will do, before it starts: a strategy's training plan and data budget, or a
prepared dataset's (mambaft.train.plan, mambaft.data.planner).

    mambaft plan quick                  # the plan of a preset, without data (sizes: the published ones)
    mambaft plan quick --budget cpu     # the same under the course's CPU budget
    mambaft plan outputs/data           # the data budget of a prepared dataset (its stats.json)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mambaft.config import BUDGETS, make_config, parse_overrides
from mambaft.data.planner import format_plan, plan_budget
from mambaft.train.plan import plan_lines

PARAMS_124M = 124_104_719   # the user's base model (docs/mambaswelu.md): what the plan's lr check assumes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mambaft plan", description=__doc__.splitlines()[0])
    p.add_argument("target", nargs="?", default="conversational", help="a strategy, or a prepared data folder")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config fields (values read as JSON)")
    p.add_argument("--budget", default="plan", choices=BUDGETS)
    # intermixed: KEY=VALUE may come before or after --budget (`config quick --budget cpu base=X`);
    # plain parse_args stops filling the positionals at the first option and rejects what follows
    a = p.parse_intermixed_args(argv)
    overrides = parse_overrides(a.overrides)
    if Path(a.target).is_dir():
        stats = json.loads((Path(a.target) / "stats.json").read_text(encoding="utf-8"))
        c = make_config(stats.get("strategy", "conversational"), a.budget, **overrides)
        print(format_plan(plan_budget(c, stats)))
        return 0
    c = make_config(a.target, a.budget, **overrides)
    lines, warns = plan_lines(c, world_size=c.num_gpus, n_params=PARAMS_124M)
    print("\n".join(lines))
    print("\n".join(f"WARNING: {w}" for w in warns))
    print(format_plan(plan_budget(c)))
    return 0
