"""`mambaft plot`: plot, or follow live, a run's metrics.jsonl (mambaft.plots).

    mambaft plot outputs/run/metrics.jsonl --png loss.png [--follow]
"""
from __future__ import annotations

import argparse
import os

from mambaft.plots import APPEAR_TIMEOUT_S, Metrics, _wait_for_file, follow_metrics, plot_metrics
from mambaft.train.metrics import read_metrics


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mambaft plot", description=__doc__.splitlines()[0])
    p.add_argument("metrics", help="OUT/metrics.jsonl")
    p.add_argument("--png", help="write the figure here (default: beside the metrics file)")
    p.add_argument("--follow", action="store_true", help="keep reading until Ctrl-C or --timeout")
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--timeout", type=float)
    a = p.parse_args(argv)
    png = a.png or os.path.join(os.path.dirname(a.metrics) or ".", "loss.png")
    if a.follow and not os.path.isfile(a.metrics):
        _wait_for_file(a.metrics, a.timeout if a.timeout is not None else APPEAR_TIMEOUT_S, a.interval)
    if a.follow:
        m = follow_metrics(a.metrics, None, png, interval=a.interval, timeout=a.timeout, mode="text")
    else:
        m = Metrics(read_metrics(a.metrics))
        plot_metrics(m, png)
        print(m.summary())
    print(f"wrote {png} ({len(m.records)} records)")
    return 0
