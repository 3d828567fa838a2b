"""Where one fine-tuning step's time goes: the profiler's op table, and SWELU's share measured alone.

    python benchmarks/profile_step.py                               # 124M, 2 x 256, half prompt, auto precision
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/profile_step.py --precision fp32

Prints the median step time (forward, chunked loss, backward, clip, fused AdamW: the loop's own
`micro_step` + `optimizer_step`), torch.profiler's self-CPU table of one more step, and the forward +
backward time of every SWELU the step runs (the 15 activations and gates at their real shapes),
timed alone: the most a fused SWELU kernel could save. It runs in the process environment the
fine-tune gets (mambaft.runtime.LAUNCH_ENV: `OMP_WAIT_POLICY=PASSIVE`, the glibc malloc tunables;
both must be set when the process starts, so it restarts itself with them; your own values win).
No test asserts any of it: it is a measurement.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from mambaft import runtime
from mambaft.model import MambaSWELU, MambaSWELUConfig
from mambaft.model.kernels.swelu import swelu, swelu_gate
from mambaft.train.optim import build_optimizer
from mambaft.train.step import micro_step, optimizer_step


def main(argv=None) -> None:
    if argv is None:
        runtime.relaunch_in_launch_env(sys.argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--prompt-fraction", type=float, default=0.5, help="leading share of each row untrained")
    p.add_argument("--precision", default="auto", help="auto (bf16 where native), fp32, bf16")
    p.add_argument("--steps", type=int, default=3, help="timed steps (median), after one warm-up")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--d-model", type=int, default=1024, help="1024: the 124M model (dense head 2 x this)")
    p.add_argument("--n-layers", type=int, default=6)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    # default: the 124M model (D 1024, 6 blocks, E 2048, H 2048)
    cfg = MambaSWELUConfig(d_model=a.d_model, n_layers=a.n_layers, dense_hidden_dim=2 * a.d_model)
    model = MambaSWELU(cfg).train()
    model.freeze_dead()
    opt = build_optimizer(model, lr=1e-5, weight_decay=0.05)
    precision = runtime.resolve_precision(a.precision, torch.device("cpu"))
    ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seq))
    labels = ids.clone()
    labels[:, :int(a.seq * a.prompt_fraction)] = -100

    def step():
        micro_step(model, ids, labels, loss_scale=1.0 / max(1, int((labels != -100).sum())),
                   autocast_ctx=runtime.autocast(torch.device("cpu"), precision))
        optimizer_step(model, opt, lr=1e-5, grad_clip=1.0)

    step()
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()

    # SWELU alone: per block the activation [B, L, D] and the gate [B, L, E] (+ its sigmoid input),
    # then the head's three [B, L, H], [B, L, H], [B, L, D]; inputs bf16 under bf16 autocast, as in the step
    dt = torch.bfloat16 if precision == "bf16" else torch.float32
    B, L, D, E, H = a.batch, a.seq, cfg.d_model, cfg.d_inner, cfg.dense_hidden_dim
    k = torch.tensor(0.6, requires_grad=True)

    def swelus():
        outs = []
        for _ in range(cfg.n_layers):
            x = torch.randn(B, L, E, dtype=dt, requires_grad=True)
            z = torch.randn(B, L, E, dtype=dt, requires_grad=True)
            outs.append(swelu_gate(x, k, z))
            outs.append(swelu(torch.randn(B, L, D, dtype=dt, requires_grad=True), k))
        for w in (H, H, D):
            outs.append(swelu(torch.randn(B, L, w, dtype=dt, requires_grad=True), k))
        return outs

    def swelu_time() -> float:
        outs = swelus()                                       # inputs made outside the timed part
        t = time.perf_counter()
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
        backward = time.perf_counter() - t
        x = {w: torch.randn(B, L, w, dtype=dt) for w in {D, E, H}}
        z = torch.randn(B, L, E, dtype=dt)
        t = time.perf_counter()
        with torch.no_grad():
            for _ in range(cfg.n_layers):
                swelu_gate(x[E], k, z)
                swelu(x[D], k)
            for w in (H, H, D):
                swelu(x[w], k)
        return backward + time.perf_counter() - t

    swelu_time()
    sw = statistics.median(swelu_time() for _ in range(a.steps))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, precision {precision}, "
          f"{a.threads} threads, {B} x {L} tokens ({a.prompt_fraction:.0%} prompt), "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES')}")
    print(f"step: median {step_s:.3f} s over {a.steps} ({', '.join(f'{t:.3f}' for t in times)})")
    print(f"SWELU forward + backward alone at the step's shapes: {sw:.3f} s = {sw / step_s:.0%} of the step")


if __name__ == "__main__":
    main()
