"""`mambaft config`: print a resolved config, its arithmetic, and where each value came from (mambaft.config).

    mambaft config conversational lr=1e-4     # the preset with an override
    mambaft config quick --budget cpu         # what the course trains on a CPU
"""
from __future__ import annotations

import argparse

from mambaft.config import BUDGETS, STRATEGIES, config_origins, make_config, parse_overrides


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mambaft config", description=__doc__.splitlines()[0])
    p.add_argument("strategy", nargs="?", default="conversational", choices=STRATEGIES)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config fields (values read as JSON)")
    p.add_argument("--budget", default="plan", choices=BUDGETS, help="the layer between preset and overrides")
    # intermixed: KEY=VALUE may come before or after --budget (`config quick --budget cpu base=X`);
    # plain parse_args stops filling the positionals at the first option and rejects what follows
    a = p.parse_intermixed_args(argv)
    overrides = parse_overrides(a.overrides)
    c = make_config(a.strategy, a.budget, **overrides)
    print(c.to_json())
    print(f"global batch {c.global_batch} rows, <= {c.tokens_per_step:,} tokens/step, "
          f"{c.rows_seen:,} rows over {c.max_steps:,} steps")
    for key, origin in sorted(config_origins(a.strategy, a.budget, **overrides).items()):
        print(f"  {key} = {getattr(c, key)!r}  ({origin})")
    return 0
