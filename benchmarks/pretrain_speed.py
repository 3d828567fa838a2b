"""Pretraining speed of the demo base: tokens/s and achieved FLOP/s against the matmul peak measured
on the same machine, before and after, and the ratio.

"before" is how `mambaft pretrain` ran until this round: the old demo size (d_model 128, 4 x 512
tokens per step) in the environment a shell gives it (glibc malloc and OpenMP defaults).
"after" is how it runs now: it restarts itself in mambaft's launcher environment
(runtime.LAUNCH_ENV), at the old size and at the new one (d_model 256, 8 x 512). Each side is the
fine-tuning step bench (`python -m mambaft.bench train`, one worker process per side, bf16 autocast
where native, no dropout, every position trained), so the step is exactly the one pretraining runs.

    python benchmarks/pretrain_speed.py             # ~3 min on 2 cores; run it on a quiet machine
    python benchmarks/pretrain_speed.py --steps 5
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

SIDES = [  # (label, env, d_model, batch, seq)
    ("before: d128 4x512, shell env", "default", 128, 4, 512),
    ("after:  d128 4x512, launch env", "fast", 128, 4, 512),
    ("after:  d256 8x512, launch env", "fast", 256, 8, 512),
]


def run_side(env: str, d: int, batch: int, seq: int, steps: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as fh:
        out = fh.name
    cmd = [sys.executable, "-m", "mambaft.bench", "train", "--impl", "mambaft", "--precision", "auto",
           "--env", env, "--d-model", str(d), "--dense", str(2 * d), "--batch", str(batch), "--seq", str(seq),
           "--dropout", "0", "--steps", str(steps), "--warmup", "2", "--no-memory", "--out", out]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(out) as fh:
        obj = json.loads(fh.read().splitlines()[-1])
    os.unlink(out)
    return obj


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6, help="timed steps per side (median)")
    args = p.parse_args()
    rows = []
    for label, env, d, b, s in SIDES:
        o = run_side(env, d, b, s, args.steps)
        rows.append((label, o))
    base = rows[0][1]["tokens_per_s"]
    print(f"{'side':34s} {'tokens/s':>9s} {'x before':>9s} {'GFLOP/s':>8s} {'peak GFLOP/s':>13s} {'of peak':>8s}")
    for label, o in rows:
        peak = o["peak_gflops_bf16"] if o["precision"] in ("bf16", "fp16") else o["peak_gflops_fp32"]
        print(f"{label:34s} {o['tokens_per_s']:9.0f} {o['tokens_per_s'] / base:9.2f} "
              f"{o['achieved_gflops']:8.0f} {peak:13.0f} {o['mfu']:8.1%}")
    print(f"(cpu capability {rows[0][1].get('cpu_capability')}, precision {rows[0][1].get('precision')}, "
          f"load {rows[0][1].get('load_avg_1m')} -> {rows[-1][1].get('load_avg_1m')})")


if __name__ == "__main__":
    main()
