"""Side-by-side timing: one worker process per variant, alternated round by round, medians.

    parent                                      worker (python -m mambaft.bench _worker SPEC)
      spawn one worker per variant   ------->   build model and data (untimed), reply {"ready"}
      for each case, for warm-up + repeats rounds (order of the variants reversed every round):
          {"cmd": "run", "case": i}  ------->   run it once, reply {"seconds": s, ...}
      for each case: {"cmd": "mem"}  ------->   one more, untimed, under memory accounting
      {"cmd": "exit"}                ------->   reply {"peak_rss_mb": ru_maxrss of this process}

Why processes: peak memory is only honest per process (a process's high-water mark would mix both
implementations), and each implementation gets its own environment (mambaft's launchers set the
glibc allocator and OpenMP wait policy for their children; the original ran with the defaults). Why
alternation: the machines are shared and noisy, so both see the same background load, and the
medians of several repeats after a warm-up are what we compare.

Two memory figures per measurement (see `peak_alloc_bytes`):
    peak_mem_mb   high-water mark of torch tensor allocations during one extra run of the case, plus
                  every tensor alive when it starts (weights, optimizer state, inputs). On CPU it
                  is measured with the profiler's allocation events (a tracemalloc for torch
                  tensors), on CUDA with torch.cuda.max_memory_allocated. It excludes the
                  interpreter, libraries and allocator slack, so the two implementations compare
                  like for like.
    peak_rss_mb   ru_maxrss of the worker process: everything the OS saw, setup included.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

MB = 1024 * 1024


# --- measurement helpers (used inside workers) --------------------------------------------------
def worker_device(a: dict) -> torch.device:
    """A worker's set-up before it builds anything: its threads, its seed, then the device it runs on."""
    from mambaft import runtime

    runtime.set_threads(a["threads"])
    runtime.seed_everything(a["seed"])
    return runtime.pick_device(a["device"])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Wall seconds of fn() (CUDA work included), and its result."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def live_bytes(*objs) -> int:
    """Bytes of the distinct tensor storages reachable from modules, optimizers, tensors, lists."""
    seen: set = set()
    total = 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            key = (t.device.type, t.untyped_storage().data_ptr())
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()

    for obj in objs:
        if isinstance(obj, torch.nn.Module):
            for p in obj.parameters():
                add(p)
                add(p.grad)
            for b in obj.buffers():
                add(b)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                for v in state.values():
                    add(v)
        elif isinstance(obj, (list, tuple)):
            for t in obj:
                add(t)
        else:
            add(obj)
    return total


def peak_alloc_bytes(fn: Callable[[], object], device: torch.device, static_bytes: int) -> int:
    """Peak bytes of torch tensors while fn() runs: static_bytes (alive before) + the highest running
    sum of the allocations and frees fn makes. CPU: profiler memory events; CUDA: allocator stats."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return int(torch.cuda.max_memory_allocated(device))
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")]
    events.sort(key=lambda e: e.start_ns())
    running = peak = 0
    for e in events:  # (frees of blocks allocated before the profile started are not reported)
        running += e.nbytes()
        peak = max(peak, running)
    return static_bytes + peak


def peak_rss_mb() -> float:
    """ru_maxrss of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- variants and workers ---------------------------------------------------------------------
@dataclass
class Variant:
    impl: str                       # "mambaft" | "original"
    opts: dict = field(default_factory=dict)   # e.g. {"precision": "bf16", "compile": False}

    @property
    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.opts.items()))
        return f"{self.impl}[{extra}]" if extra else self.impl


def ready_info(runner) -> dict:
    """What the worker ran with. cpu_capability / bf16_native: the CPU class its kernels used, which
    ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA in the parent's environment lower (AVX2 emulation)."""
    import torch

    from mambaft.runtime import cpu_has_bf16
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return {**getattr(runner, "info", {}), "malloc": "fast" if "mmap_max=0" in tunables else "default",
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16_native": cpu_has_bf16()}


class _InProcessWorker:
    """The same protocol without a process (debugging; peak_rss_mb is then not per implementation)."""

    def __init__(self, spec: dict, make_runner):
        self.runner = make_runner(spec)
        self.ready = {"ready": True, **ready_info(self.runner)}

    def call(self, msg: dict) -> dict:
        return handle(self.runner, msg)

    def close(self) -> dict:
        return {"peak_rss_mb": None}


class _ProcessWorker:
    def __init__(self, spec: dict, env: dict, verbose: bool):
        """env: the worker's complete environment."""
        self.log = None if verbose else tempfile.TemporaryFile(mode="w+")
        cmd = [sys.executable, "-m", "mambaft.bench", "_worker", json.dumps(spec)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log if self.log is not None else None,
                                     text=True, env=env, bufsize=1)
        self.label = spec["label"]
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            tail = ""
            if self.log is not None:
                self.log.seek(0)
                tail = self.log.read()[-4000:]
            raise RuntimeError(f"benchmark worker {self.label} exited with code {self.proc.returncode}"
                               f"\n{tail}")
        return json.loads(line)

    def call(self, msg: dict) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> dict:
        out = self.call({"cmd": "exit"})
        self.proc.wait(timeout=60)
        return out


def handle(runner, msg: dict) -> dict:
    cmd = msg["cmd"]
    if cmd == "run":
        return runner.run(msg["case"])
    if cmd == "mem":
        return {"peak_mem_mb": runner.mem(msg["case"]) / MB}
    if cmd == "exit":
        return {"peak_rss_mb": peak_rss_mb()}
    raise ValueError(f"unknown worker command {cmd!r}")


def worker_main(spec_json: str, make_runner) -> int:
    """Body of `python -m mambaft.bench _worker SPEC`: protocol on the real stdout, everything else
    (prints, warnings, library chatter) on stderr."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    spec = json.loads(spec_json)
    runner = make_runner(spec)
    proto.write(json.dumps({"ready": True, **ready_info(runner)}) + "\n")
    for line in sys.stdin:
        msg = json.loads(line)
        proto.write(json.dumps(handle(runner, msg)) + "\n")
        if msg["cmd"] == "exit":
            break
    return 0


# --- the parent ------------------------------------------------------------------------------
@dataclass
class Measured:
    variant: Variant
    case: dict
    runs: list                        # the replies of the timed runs (after warm-up)
    info: dict                        # the worker's "ready" reply
    peak_mem_mb: Optional[float] = None
    peak_rss_mb: Optional[float] = None

    @property
    def seconds(self) -> list:
        return [r["seconds"] for r in self.runs]

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)


def run_side_by_side(bench: str, variants: list, cases: list, args_dict: dict, *, warmup: int,
                     repeats: int, env_for: Callable[[Variant], dict], make_runner,
                     in_process: bool = False, verbose: bool = False, measure_memory: bool = True,
                     log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> list:
    """Run every case on every variant, alternating; returns a list of Measured (case-major)."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: need at least one timed run")
    workers = []
    try:
        for v in variants:
            spec = {"bench": bench, "impl": v.impl, "opts": v.opts, "args": args_dict, "label": v.label,
                    "cases": cases}
            env = env_for(v)
            log(f"[bench] starting {v.label}" + ("" if in_process else
                f" (GLIBC_TUNABLES={env.get('GLIBC_TUNABLES', 'unset')}, "
                f"OMP_WAIT_POLICY={env.get('OMP_WAIT_POLICY', 'unset')})"))
            w = (_InProcessWorker(spec, make_runner) if in_process
                 else _ProcessWorker(spec, env, verbose))
            workers.append((v, w, getattr(w, "ready", {"ready": True})))
        results = []
        for ci, case in enumerate(cases):
            runs: dict = {id(w): [] for _, w, _ in workers}
            for r in range(warmup + repeats):
                # reversed every other round, and from one case to the next (the epoch bench runs
                # each case once: its steps alternate which side goes first)
                order = workers if (r + ci) % 2 == 0 else workers[::-1]
                for v, w, _ in order:
                    reply = w.call({"cmd": "run", "case": ci})
                    tag = "warm-up" if r < warmup else f"run {r - warmup + 1}/{repeats}"
                    log(f"[bench] {bench} case {ci} {v.label} {tag}: {reply['seconds']:.3f} s")
                    if r >= warmup:
                        runs[id(w)].append(reply)
            for v, w, ready in workers:
                m = Measured(v, case, runs[id(w)], ready)
                if measure_memory:
                    m.peak_mem_mb = w.call({"cmd": "mem", "case": ci})["peak_mem_mb"]
                results.append(m)
        for v, w, _ in workers:
            rss = w.close()["peak_rss_mb"]
            for m in results:
                if m.variant is v:
                    m.peak_rss_mb = rss
        workers = []
        return results
    finally:
        for _, w, _ in workers:  # an error: do not leave children behind
            proc = getattr(w, "proc", None)
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def emit(obj: dict, out_path: Optional[str] = None) -> None:
    """One JSON object per line on stdout (and appended to out_path)."""
    line = json.dumps(obj, sort_keys=False)
    print(line, flush=True)
    if out_path:
        with open(out_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
