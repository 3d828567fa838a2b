"""`mambaft scan`: check the chunked selective scan against the reference loop and time both (mambaft.model.scan).

    mambaft scan
"""
from __future__ import annotations

import torch

from mambaft.model.kernels.scan import selective_scan, selective_scan_ref


def _bench(Bsz: int = 1, L: int = 512, E: int = 1536, N: int = 16, repeats: int = 3) -> None:
    """Values/gradients vs the reference, then training-step time (forward + backward) of both."""
    import time

    torch.manual_seed(0)
    x = torch.randn(Bsz, L, E, requires_grad=True)
    delta = torch.nn.functional.softplus(torch.randn(Bsz, L, E) - 3).requires_grad_()
    A = (-torch.rand(E, N) * 4).requires_grad_()
    Bm, Cm = torch.randn(Bsz, L, N, requires_grad=True), torch.randn(Bsz, L, N, requires_grad=True)
    D = torch.ones(E, requires_grad=True)
    args = (x, delta, A, Bm, Cm, D)
    for name, fn in (("reference loop (autograd)", selective_scan_ref), ("chunked Function", selective_scan)):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            y, h = fn(*args)
            (y.square().mean() + h.mean()).backward()
            times.append(time.perf_counter() - t0)
            for a in args:
                a.grad = None
        med = sorted(times)[len(times) // 2]
        print(f"{name:28s} {med * 1e3:8.1f} ms/step  {Bsz * L / med:8.0f} tok/s  (B={Bsz} L={L} E={E} N={N})")


def main(argv=None) -> int:
    import argparse

    from mambaft.runtime import set_threads
    argparse.ArgumentParser(prog="mambaft scan", description=__doc__.splitlines()[0]).parse_args(argv)
    set_threads()
    _bench()
    return 0
