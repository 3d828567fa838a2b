"""Notebook 03's fine-tune in its own process (the kernel never touches CUDA), its output in a log file,
followed phase by phase; and what decides that process's shape before it starts: how many processes
(`num_processes`), the launcher that really starts them (`finetune_command`), the GPU pre-flight and the
environment it asks for (`preflight_env`), and afterwards the check that the run had as many ranks as
were asked (`check_world_size`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from mambaft import course
from mambaft.course import ROOT, PathLike, phase_dirs


def visible_gpus() -> int:
    """NVIDIA GPUs this process may use, counted with `nvidia-smi -L` (the kernel never initialises
    CUDA) and limited by CUDA_VISIBLE_DEVICES when it is set; 0 without a GPU."""
    import shutil
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return 0
    n = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU ")) if out.returncode == 0 else 0
    if visible is not None:
        n = min(n, len([v for v in visible.split(",") if v.strip()]))
    return n


def num_processes(cfg, asked: int = 0, gpus: Optional[int] = None, accelerate_config: PathLike = "") -> tuple[int, str]:
    """(training processes, why). An accelerate YAML's num_processes wins (the launcher reads it);
    then `asked` > 0 (NUM_PROCESSES); 0 means one per visible GPU, capped by the preset's num_gpus (the
    plan's global batch is sized for that many), and 1 on a CPU."""
    if isinstance(asked, bool) or not isinstance(asked, int) or asked < 0:
        raise ValueError(f"NUM_PROCESSES={asked!r}: expected 0 (one per visible GPU) or a positive integer")
    if accelerate_config:
        import yaml
        path = Path(_absolute(accelerate_config))
        if not path.is_file():
            raise FileNotFoundError(f"ACCELERATE_CONFIG={str(accelerate_config)!r}: no such file ({path})")
        n = int((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("num_processes", 1))
        return n, f"{n} process(es): num_processes of {path}"
    gpus = visible_gpus() if gpus is None else gpus
    if asked:
        where = f"{gpus} GPU(s) visible" if gpus else "no GPU: gloo ranks on the CPU"
        return asked, f"{asked} process(es): NUM_PROCESSES={asked} ({where})"
    if not gpus:
        return 1, "1 process: no GPU visible (NUM_PROCESSES=0 means one per GPU)"
    n = min(gpus, cfg.num_gpus)
    cap = f", capped by the preset's num_gpus={cfg.num_gpus}" if gpus > cfg.num_gpus else ""
    return n, f"{n} process(es): one per visible GPU ({gpus} visible{cap})"


def _absolute(path: PathLike) -> str:
    """A path of the command, absolute against this process's directory: the training processes may
    start elsewhere (a notebook's kernel runs in notebooks/, the course's in the repository root)."""
    return str(Path(os.path.expanduser(str(path))).absolute()) if str(path) else ""


def finetune_command(cfg, base: PathLike, data: PathLike, out: PathLike, num_processes: int = 1,
                     accelerate_config: str = "", extra: Sequence[str] = ()) -> list[str]:
    """The command that starts `num_processes` training processes of `-m mambaft.finetune`, with every
    course value passed as --set, so the subprocesses train exactly the notebook's cfg.

    GPUs: `accelerate launch --num_processes N [--multi_gpu]`. A CPU with one process: `accelerate
    launch --cpu`. A CPU with N > 1: `torchrun --standalone --nproc_per_node N`, because accelerate
    1.16 starts ONE process, without WORLD_SIZE, for `--num_processes 2 --cpu` (its launcher takes the
    single-process path whenever --cpu is given), silently halving the global batch, and refuses
    `--cpu --multi_gpu` ("only use one of"): both checked by hand with a script printing WORLD_SIZE."""
    from mambaft.config import make_config
    gpu = course.has_gpu()   # through the package: tests replace it there
    if accelerate_config:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", _absolute(accelerate_config)]
    elif not gpu and num_processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
               "--nproc_per_node", str(num_processes)]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        cmd += ["--cpu"] if not gpu else (["--multi_gpu"] if num_processes > 1 else [])
    cmd += ["-m", "mambaft.finetune", "--strategy", cfg.strategy, "--base", _absolute(base),
            "--data", _absolute(data), "--out", _absolute(out)]
    # Each value that differs from the PRESET (the subprocess calls make_config(strategy, **sets)): a value
    # equal to the dataclass default but not to the preset (batch_size=2 under smoke's 4) must be passed.
    preset = make_config(cfg.strategy).to_dict()
    sets = {k: v for k, v in cfg.to_dict().items() if k not in ("strategy", "base") and v != preset[k]}
    if make_config(cfg.strategy, base=cfg.base, **sets) != cfg:   # a value derived from another (save_every)
        sets = {k: v for k, v in cfg.to_dict().items() if k not in ("strategy", "base")}
    for key, value in sets.items():
        cmd += ["--set", f"{key}={json.dumps(list(value) if isinstance(value, tuple) else value)}"]
    return cmd + list(extra)


def estimate_command(cfg, data: PathLike, n: int, steps: int = 3) -> list[str]:
    """`mambaft plan STRATEGY KEY=VALUE... --base B --data D --num-processes N --measure-steps K`: the
    time and disk of exactly this run, measured on K real steps of its own batches in a subprocess."""
    sets = finetune_command(cfg, cfg.base, data, "unused")
    overrides = [sets[j + 1] for j, a in enumerate(sets) if a == "--set"]
    return [sys.executable, "-m", "mambaft", "plan", cfg.strategy, *overrides, "--data", _absolute(data),
            "--num-processes", str(n), "--measure-steps", str(steps)] + \
        (["--base", _absolute(cfg.base)] if cfg.base else [])


def estimate_run(cfg, data: PathLike, n: int, out_txt: Optional[PathLike] = None, steps: int = 3,
                 say=print) -> str:
    """Print (and write to `out_txt`) the time and disk estimate of the run before it starts: this
    machine measured on `steps` steps (0: not measured), and the plan's GPUs from the table."""
    cmd = estimate_command(cfg, data, n, steps)
    p = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), cwd=str(ROOT))
    if p.returncode != 0:
        raise RuntimeError(f"the estimate failed ({' '.join(cmd[2:])}): {p.stderr.strip()[-1500:]}")
    lines = p.stdout.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("time and disk of")), 0)
    text = "\n".join(lines[start:])
    if out_txt is not None:
        Path(out_txt).write_text(" ".join(cmd[2:]) + "\n" + text + "\n", encoding="utf-8")
    say(text)
    return text


def preflight_env(n: int, *, gpu: Optional[bool] = None, say=print) -> dict:
    """Run `mambaft preflight --num-processes N --json` in a subprocess (CUDA stays out of the kernel),
    print its report, and return the environment it asks for (NCCL_P2P_DISABLE=1 on RTX 4090 boxes),
    saying what is set and what the user had already set. Raises RuntimeError when a check fails that
    no setting fixes (too few GPUs, a GPU already full). Without a GPU: skipped, {}."""
    gpu = course.has_gpu() if gpu is None else gpu
    if not gpu:
        say("pre-flight: skipped (no GPU visible; the CPU run needs no NCCL settings)")
        return {}
    p = subprocess.run([sys.executable, "-m", "mambaft", "preflight", "--num-processes", str(n), "--json"],
                       capture_output=True, text=True, env=child_env(), cwd=str(ROOT))
    try:
        rep = json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"mambaft preflight exited {p.returncode} without a report: {p.stderr[-1500:]}")
    return apply_preflight(rep, say=say)


def apply_preflight(rep: dict, say=print) -> dict:
    """The environment a pre-flight report (PreflightReport.to_dict()) asks for, said line by line."""
    for line in rep.get("lines", []):
        say(f"pre-flight: {line}")
    if rep.get("blocking"):
        raise RuntimeError("pre-flight failed: " + "; ".join(rep["blocking"]) + " (run `mambaft preflight`)")
    env = {}
    for key, value in rep.get("env", {}).items():
        if key in os.environ:
            say(f"pre-flight: {key}={os.environ[key]} kept (already set; the check advises {key}={value})")
        else:
            env[key] = str(value)
            say(f"pre-flight: set {key}={value} for the training processes ({'; '.join(rep.get('advice', []))})")
    if not rep.get("env"):
        say("pre-flight: no environment change needed")
    return env


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


def launch_finetune(cmd: Sequence[str], log_path: PathLike, env: Optional[dict] = None) -> subprocess.Popen:
    """Start the fine-tune in its own process (the notebook kernel never touches CUDA), its output
    going to `log_path`; `env` (the pre-flight's) is added to the environment."""
    log = open(log_path, "w", encoding="utf-8")
    return subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env={**child_env(), **(env or {})},
                            cwd=str(ROOT))


def started_world_size(metrics: PathLike) -> Optional[int]:
    """world_size of the first "start" event of a metrics.jsonl (None before one is written)."""
    path = Path(metrics)
    if not path.is_file():
        return None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("event") == "start" and "world_size" in row:
            return int(row["world_size"])
    return None


def check_world_size(cfg, run: PathLike, expected: int) -> None:
    """Raise when a phase started with another number of ranks than was asked: a launcher that starts
    one process for N (accelerate --cpu) trains at 1/N of the global batch without an error."""
    for d in phase_dirs(cfg, run):
        got = started_world_size(d / "metrics.jsonl")
        if got is not None and got != expected:
            raise RuntimeError(f"{d}: the run started {got} process(es), {expected} were asked (NUM_PROCESSES): "
                               f"its global batch is {cfg.batch_size * cfg.grad_accum * got} rows, not "
                               f"{cfg.batch_size * cfg.grad_accum * expected}; check the launcher")


def check_finished(proc: subprocess.Popen, log_path: PathLike, lines: int = 30, *, cfg=None,
                   run: Optional[PathLike] = None, expected: Optional[int] = None) -> None:
    """Raise with the log's last lines when the fine-tune process failed, and (cfg, run, expected
    given) when it ran with another number of processes than asked."""
    code = proc.wait()
    if cfg is not None and run is not None and expected:   # first: a wrong size is why follow_plan stopped it
        check_world_size(cfg, run, expected)
    if code != 0:
        tail = Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        raise RuntimeError(f"fine-tuning exited with code {code}; last lines of {log_path}:\n" + "\n".join(tail))


def follow_plan(cfg, run: PathLike, proc, expected: Optional[int] = None) -> list:
    """(metrics.jsonl, until) pairs for follow_metrics: one per phase; a phase is over when its
    result.json appears (or the process ended). With `expected`, a first phase whose start event shows
    another world size stops the process at once (check_finished then says why) rather than after
    the whole run."""
    dirs = phase_dirs(cfg, run)

    def wrong_size() -> bool:
        got = started_world_size(dirs[0] / "metrics.jsonl")
        if expected and got is not None and got != expected and proc.poll() is None:
            proc.terminate()
            proc.wait()
        return bool(expected and got is not None and got != expected)

    plan = []
    for d in dirs[:-1]:
        plan.append((d / "metrics.jsonl",
                     lambda d=d: wrong_size() or (d / "result.json").is_file() or proc.poll() is not None))
    last = dirs[-1]
    plan.append((last / "metrics.jsonl", (lambda: wrong_size() or proc.poll() is not None) if expected else proc))
    return plan
