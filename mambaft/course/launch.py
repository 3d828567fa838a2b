"""Notebook 03's fine-tune: `accelerate launch -m mambaft.finetune ...` in its own process (the kernel
never touches CUDA), its output in a log file, followed phase by phase."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from mambaft import course
from mambaft.course import ROOT, PathLike, phase_dirs


def finetune_command(cfg, base: PathLike, data: PathLike, out: PathLike, num_processes: int = 1,
                     accelerate_config: str = "", extra: Sequence[str] = ()) -> list[str]:
    """`accelerate launch ... -m mambaft.finetune ...` with every course value passed as --set,
    so the subprocess trains exactly the notebook's cfg."""
    from mambaft.config import Config
    default = Config()
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        cmd += ["--config_file", str(accelerate_config)]
    else:
        cmd += ["--num_processes", str(num_processes), "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no"]
        if not course.has_gpu():   # through the package: tests replace it there
            cmd += ["--cpu"]
        elif num_processes > 1:
            cmd += ["--multi_gpu"]
    cmd += ["-m", "mambaft.finetune", "--strategy", cfg.strategy, "--base", str(base),
            "--data", str(data), "--out", str(out)]
    for key, value in cfg.to_dict().items():
        if key in ("strategy", "base") or value == getattr(default, key):
            continue
        cmd += ["--set", f"{key}={json.dumps(list(value) if isinstance(value, tuple) else value)}"]
    return cmd + list(extra)


def child_env() -> dict:
    """Environment of the processes the course starts (kernels, training). Both settings only work
    from the environment of a NEW process:
      * fast malloc (runtime.FAST_MALLOC_ENV): 1.3-2.7x faster CPU steps (cpu-performance.md);
      * OMP_WAIT_POLICY=PASSIVE: OpenMP threads sleep instead of spinning at barriers. On a shared
        2-core box (load ~10) a demo-base training step took 11.5 s with spinning threads and 2.0 s
        with passive ones (measured side by side); with a free machine it costs nothing measurable."""
    from mambaft.runtime import LAUNCH_ENV
    env = {**LAUNCH_ENV, **os.environ, "PYTHONUNBUFFERED": "1"}  # the user's own settings win
    return env


def launch_finetune(cmd: Sequence[str], log_path: PathLike) -> subprocess.Popen:
    """Start the fine-tune in its own process (the notebook kernel never touches CUDA), its output
    going to `log_path`."""
    env = child_env()
    log = open(log_path, "w", encoding="utf-8")
    return subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))


def check_finished(proc: subprocess.Popen, log_path: PathLike, lines: int = 30) -> None:
    """Raise with the log's last lines when the fine-tune process failed."""
    code = proc.wait()
    if code != 0:
        tail = Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        raise RuntimeError(f"fine-tuning exited with code {code}; last lines of {log_path}:\n" + "\n".join(tail))


def follow_plan(cfg, run: PathLike, proc) -> list:
    """(metrics.jsonl, until) pairs for follow_metrics: one per phase; a phase is over when its
    result.json appears (or the process ended)."""
    dirs = phase_dirs(cfg, run)
    plan = []
    for d in dirs[:-1]:
        plan.append((d / "metrics.jsonl",
                     lambda d=d: (d / "result.json").is_file() or proc.poll() is not None))
    plan.append((dirs[-1] / "metrics.jsonl", proc))
    return plan
