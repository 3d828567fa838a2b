"""`python -m mambaft.bench train|generate|prepare [options]`: mambaft against the original computation.

Prints one JSON object per measurement on stdout (progress and a summary table on stderr). Every
object carries bench, impl ("mambaft" or "original"), tokens_per_s (prepare: also
conversations_per_s), peak_mem_mb and the workload; mambaft's objects add speedup_vs_original and
peak_mem_vs_original when the original ran in the same invocation (--impl both, the default).

    python -m mambaft.bench train                 # ~4 min on 2 cores: 124M, 4 x 1024, bf16 + fp32
    python -m mambaft.bench generate              # 512 + 128 tokens at batch 1 and 8, time per token
    python -m mambaft.bench prepare               # conversations/s
    python -m mambaft.bench epoch --data DIR      # trained tokens/s over a real prepared set
    python -m mambaft.bench train --impl original --out results.jsonl    # one side alone

See benchmarks/README.md for the numbers measured and how to read them.
"""
from __future__ import annotations

import argparse
import os
import sys

from . import epoch as epoch_bench
from . import generate as generate_bench
from . import prepare as prepare_bench
from . import train as train_bench

BENCHES = {"train": train_bench, "generate": generate_bench, "prepare": prepare_bench, "epoch": epoch_bench}
RUNNERS = {"train": "TrainRunner", "generate": "GenerateRunner", "prepare": "PrepareRunner",
           "epoch": "EpochRunner"}


def make_runner(spec: dict):
    return getattr(BENCHES[spec["bench"]], RUNNERS[spec["bench"]])(spec)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mambaft.bench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="bench", required=True)
    for name, mod in BENCHES.items():
        s = sub.add_parser(name, help=mod.__doc__.splitlines()[0], description=mod.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        s.add_argument("--impl", default="both", choices=["mambaft", "original", "both"])
        s.add_argument("--threads", type=int, default=2, help="intra-op threads per worker")
        s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... ('' = cuda if present)")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--env", default="auto", choices=["auto", "default", "fast"],
                       help="process environment of the workers. fast: runtime.LAUNCH_ENV (glibc malloc "
                            "tunables + OMP_WAIT_POLICY=PASSIVE); auto: fast for mambaft (as its "
                            "launchers start it), glibc/OpenMP defaults for the original (as it ran)")
        s.add_argument("--out", default=None, help="also append the JSON lines to this file")
        s.add_argument("--in-process", action="store_true",
                       help="no worker processes (debugging): peak_rss_mb is then null")
        s.add_argument("--no-memory", action="store_true", help="skip the extra memory-accounting run")
        s.add_argument("--verbose", action="store_true", help="show the workers' stderr")
        mod.add_args(s)
    return p


def _env_for(args):
    from mambaft.runtime import LAUNCH_ENV

    def env_for(variant) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "OMP_WAIT_POLICY")}
        fast = args.env == "fast" or (args.env == "auto" and variant.impl == "mambaft")
        if fast and args.device in ("cpu", ""):
            env.update(LAUNCH_ENV)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_repo_root(), env.get("PYTHONPATH")]))
        return env
    return env_for


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _peaks(args) -> dict:
    """Measured GEMM FLOP/s (fp32, bf16) in this process with the workers' thread count."""
    import torch

    from mambaft import runtime

    from .flops import gemm_shape, matmul_peak, nominal_bf16_peak
    runtime.set_threads(args.threads)
    dev = runtime.pick_device(args.device or None)
    shape = gemm_shape(dev, args.batch * args.seq, args.d_model)
    out = {"fp32": matmul_peak(dev, torch.float32, shape), "bf16": matmul_peak(dev, torch.bfloat16, shape)}
    gpu, nominal = nominal_bf16_peak(dev)
    if gpu:
        out["gpu"], out["nominal_bf16"] = gpu, nominal
    return out


def _add_ratios(objs: list, bench: str) -> None:
    """mambaft objects get speedup_vs_original / peak_mem_vs_original against the same workload."""
    key = "conversations_per_s" if bench == "prepare" else "tokens_per_s"
    workload = ("phase", "batch", "seq", "accum", "context", "prompt", "conversations")
    for o in objs:
        if o["impl"] != "mambaft":
            continue
        for r in objs:
            if r["impl"] == "original" and all(o.get(k) == r.get(k) for k in workload):
                o["speedup_vs_original"] = o[key] / r[key]
                if o.get("peak_mem_mb") and r.get("peak_mem_mb"):
                    o["peak_mem_vs_original"] = o["peak_mem_mb"] / r["peak_mem_mb"]
                if o.get("peak_rss_mb") and r.get("peak_rss_mb"):
                    o["peak_rss_vs_original"] = o["peak_rss_mb"] / r["peak_rss_mb"]


def _table(objs: list, bench: str) -> str:
    key = "conversations_per_s" if bench == "prepare" else "tokens_per_s"
    lines = [f"{'impl':9s} {'precision':9s} {'workload':28s} {key:>20s} {'peak MB':>9s} {'RSS MB':>8s} "
             f"{'x orig':>7s} {'mem/orig':>8s}"]
    for o in objs:
        wl = ",".join(f"{k}={o[k]}" for k in ("phase", "batch", "seq", "context", "prompt", "new",
                                               "conversations") if k in o)
        f = lambda v, fmt: format(v, fmt) if isinstance(v, (int, float)) else "-"  # noqa: E731
        lines.append(f"{o['impl']:9s} {str(o.get('precision') or '-'):9s} {wl:28s} {f(o[key], '20.2f')} "
                     f"{f(o.get('peak_mem_mb'), '9.0f')} {f(o.get('peak_rss_mb'), '8.0f')} "
                     f"{f(o.get('speedup_vs_original'), '7.2f')} {f(o.get('peak_mem_vs_original'), '8.2f')}")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_worker":
        from .harness import worker_main
        return worker_main(argv[1], make_runner)
    args = build_parser().parse_args(argv)
    from .harness import emit, run_side_by_side
    mod = BENCHES[args.bench]
    if args.bench == "train" and args.seq < 2:
        raise SystemExit("--seq must be >= 2 (the loss predicts token t from t-1)")
    variants, cases = mod.variants(args), mod.cases(args)
    load_before = os.getloadavg()[0]  # the machines are shared: say how busy this one was
    peaks = _peaks(args) if args.bench == "train" else {}
    epoch = args.bench == "epoch"     # every case is one optimizer step of the epoch: run once each
    repeats = args.steps if args.bench == "train" else 1 if epoch else args.repeats
    results = run_side_by_side(args.bench, variants, cases, vars(args), warmup=0 if epoch else args.warmup,
                               repeats=repeats, env_for=_env_for(args), make_runner=make_runner,
                               in_process=args.in_process, verbose=args.verbose,
                               measure_memory=not (args.no_memory or epoch))
    if epoch:
        objs = mod.summarize_all(results, args)
        for o in objs:
            o["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            o["env"] = args.env
            emit(o, args.out)
        print(mod.table(objs), file=sys.stderr)
        return 0
    if args.bench == "train":  # the best of: before, after, and the samples the workers took
        again = _peaks(args)
        samples = [r["gemm_peak"] for m in results for r in m.runs if "gemm_peak" in r]
        for k in ("fp32", "bf16"):
            peaks[k] = max([peaks[k], again[k]] + [s[k] for s in samples])
    objs = [mod.summarize(m, args, peaks) for m in results]
    for m, o in zip(results, objs):  # the CPU class each worker's kernels used (see harness.ready_info)
        o.update({k: m.info.get(k) for k in ("cpu_capability", "bf16_native")})
        o["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        o["env"] = args.env
    _add_ratios(objs, args.bench)
    for o in objs:
        emit(o, args.out)
    print(_table(objs, args.bench), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
