"""The papermill runner behind `mambaft course` (mambaft.cli.course): the five notebooks in order, one
strategy, one run folder, and a course.json that records the parameters, the command, the CPU class and
the times. A failing notebook raises CourseError naming the notebook and the cell.

The notebooks' helpers (the run folder layout, what each notebook records) are in `mambaft.course`.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from mambaft.course import DEMO_BASE, NOTEBOOKS, ROOT, PathLike
from mambaft.course.launch import child_env
from mambaft.errors import UserError

NOTEBOOK_DIR = ROOT / "notebooks"


# --- running the notebooks ---------------------------------------------------------------------------
# papermill parameters per strategy (the notebooks' defaults are the demo's). The strategy is the dial;
# these only size what the notebooks do around the training (evaluation sizes, sweep length).
STRATEGY_PARAMS: dict[str, dict[str, Any]] = {
    "quick": {},
    "conversational": {},
    "specialized": {},
    "smoke": {"MAX_NEW_TOKENS": 24, "SWEEP_STEPS": 3, "SMOKE_STEPS": 3, "EVAL_LIMIT": 4,
              "BENCH_LIMIT": 4, "CHAT": False, "CONTEXT_WINDOWS": 4, "ESTIMATE_STEPS": 2},
}
class CourseError(UserError, RuntimeError):
    """A notebook failed; the message names the notebook, the cell and the error."""

    def __init__(self, notebook: str, cell: Optional[int], error: str, executed: Path):
        where = f"cell {cell}" if cell is not None else "before any cell ran"
        super().__init__(f"notebook {notebook} failed in {where}: {error}\n  executed notebook: {executed}")
        self.notebook, self.cell, self.error, self.executed = notebook, cell, error, executed


def failed_cell(executed: Path) -> tuple[Optional[int], str]:
    """(1-based index among code cells, first line of the cell's source) of the cell with an error
    output in an executed notebook, or (None, "")."""
    import nbformat
    try:
        nb = nbformat.read(str(executed), as_version=4)
    except Exception:
        return None, ""
    code_i = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        code_i += 1
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            first = next((ln for ln in cell.source.splitlines() if ln.strip()), "")
            return code_i, first
    return None, ""


def run_notebook(name: str, run_dir: PathLike, params: dict, *, source_dir: Optional[PathLike] = None,
                 progress: bool = True, kernel: str = "python3") -> Path:
    """Execute one notebook with papermill into RUN_DIR/<name>.ipynb; raise CourseError on failure."""
    import papermill as pm

    src = Path(source_dir or NOTEBOOK_DIR) / f"{name}.ipynb"
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such notebook")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    executed = run_dir / f"{name}.ipynb"
    declared = pm.inspect_notebook(str(src))   # a notebook gets only the parameters it declares
    wanted = {k: v for k, v in params.items() if k in declared}
    try:
        # store_widget_state=False: a widget saved without its kernel renders as a dead copy (notebook
        # 04's chat drew an empty chat whose Send did nothing); the chat cell keeps a static transcript.
        pm.execute_notebook(str(src), str(executed), parameters=wanted, kernel_name=kernel,
                            progress_bar=progress, cwd=str(ROOT), log_output=False,
                            store_widget_state=False)
    except Exception as e:  # PapermillExecutionError, or a kernel that died
        cell, first = failed_cell(executed)
        ename = getattr(e, "ename", type(e).__name__)
        evalue = getattr(e, "evalue", str(e).strip().splitlines()[0] if str(e).strip() else "")
        detail = f"{ename}: {evalue}" + (f"  [cell starts: {first!r}]" if first else "")
        raise CourseError(name, cell, detail, executed) from e
    return executed


def run_environment() -> dict:
    """The CPU class a run trained on: what ATen and oneDNN were allowed to use, and what "auto"
    precision became there (README ranges name it; ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA emulate
    an AVX2-only CPU on an AVX-512 one)."""
    import platform

    import torch

    from mambaft import runtime
    cap = torch.backends.cpu.get_cpu_capability()
    bf16 = runtime.cpu_has_bf16()
    precision = runtime.resolve_precision("auto", torch.device("cpu"))
    env = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ}
    label = f"{cap}{' + bf16 (AMX/AVX512-BF16)' if bf16 else ''}, auto precision {precision}"
    if env:
        label += " (emulated: " + " ".join(f"{k}={v}" for k, v in env.items()) + ")"
    return {"cpu_capability": cap, "bf16_native": bf16, "auto_precision": precision, "isa_env": env,
            "machine": platform.machine(), "processor": _cpu_model(), "cores": os.cpu_count(),
            "cpu_class": label}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor()


# The notebook parameters that name files. The kernels run with the repository root as their working
# directory (papermill's cwd), the user typed the paths in theirs: each is made absolute against the
# caller's directory before papermill starts, so `mambaft course --base final_model.pt --out runs` reads
# ./final_model.pt and writes everything under ./runs (a relative RUN_DIR used to land under the repo).
PATH_PARAMS = ("BASE", "RUN_DIR", "ACCELERATE_CONFIG")
# Whole-course minutes on the demo base at the CPU budget, as measured (`course.json` "total_seconds"
# of the runs in the README's table): what the course says before it starts. Strategies not measured
# on this base are said to be so.
MEASURED_MINUTES = {"quick": (3.7, "2-core AMD EPYC, AVX-512 BF16, 2026-12-08, the two-stage base")}


def expected_time(strategy: str, base: PathLike = "") -> str:
    """The line the course prints before it starts: the measured time of this strategy's demo run,
    or why there is none (another base: notebook 03 prints its own estimate from timed steps)."""
    if base and Path(base).resolve() != DEMO_BASE.resolve():
        return ("[course] expected time: not measured for this base; notebook 03 times a few real steps and "
                "prints the fine-tune's estimate before it starts")
    if strategy not in MEASURED_MINUTES:
        return (f"[course] expected time: not yet measured for {strategy} on the demo base "
                f"(quick took {MEASURED_MINUTES['quick'][0]:g} min on a {MEASURED_MINUTES['quick'][1]})")
    minutes, where = MEASURED_MINUTES[strategy]
    return f"[course] expected time: about {minutes:g} min ({strategy} on the demo base, measured on a {where})"


def caller_path(path: PathLike, cwd: Optional[PathLike] = None) -> str:
    """`path` as the user typed it, absolute against `cwd` (default: this process's working directory);
    "" (the demo base, no accelerate config) stays "". `~` is expanded; symlinks are kept as typed."""
    if path is None or str(path) == "":
        return ""
    p = Path(os.path.expanduser(str(path)))
    return str(p if p.is_absolute() else Path(cwd or os.getcwd()) / p)


def course_params(strategy: str, base: PathLike, run_dir: PathLike) -> dict:
    return {"STRATEGY": strategy, "BASE": caller_path(base), "RUN_DIR": caller_path(run_dir),
            **STRATEGY_PARAMS.get(strategy, {})}


def run_course(strategy: str = "quick", base: PathLike = "", out: PathLike = "outputs", *,
               run_name: Optional[str] = None, only: Sequence[str] = (), params: Optional[dict] = None,
               source_dir: Optional[PathLike] = None, progress: bool = True, command: str = "") -> dict:
    """Run the notebooks in order into OUT/<run_name or strategy>/. Returns {"run_dir", "notebooks",
    "seconds": {name: s}}; raises CourseError naming the notebook and cell that failed.
    RUN_DIR/course.json records the parameters, the command, the CPU class and the times."""
    run_dir = Path(caller_path(out or ".")) / (run_name or strategy)
    if base and not Path(caller_path(base)).exists():   # before any notebook starts, in the user's terms
        raise FileNotFoundError(f"--base {base}: no such file or folder (looked for {caller_path(base)})")
    names = [n for n in NOTEBOOKS if not only or n in only]
    unknown = sorted(set(only) - set(NOTEBOOKS))
    if unknown:
        raise ValueError(f"--only {', '.join(unknown)}: expected notebook names among {', '.join(NOTEBOOKS)}")
    p = {**course_params(strategy, base, run_dir), **(params or {})}
    for key in PATH_PARAMS:             # --set BASE=... / ACCELERATE_CONFIG=... are the user's paths too
        if isinstance(p.get(key), str):
            p[key] = caller_path(p[key])
    declared = _declared_parameters(source_dir, names)
    unused = sorted(set(params or {}) - declared)
    if unused:   # a typo (--set SEEED=1) would otherwise run the default silently
        raise ValueError(f"--set {', '.join(unused)}: no notebook among {', '.join(names)} has such a "
                         f"parameter (known: {', '.join(sorted(declared))})")
    from mambaft.course.params import check_params, check_same_run
    check_params(params or {}, strategy, run_dir)     # types and ranges (MAX_STEPS=-5 is refused)
    for line in check_same_run(run_dir, {k: v for k, v in p.items() if k != "RUN_DIR"}):
        print(f"[course] note: {line}", flush=True)   # a SEED/STRATEGY/BASE change raised above
    os.environ.update({k: v for k, v in child_env().items() if k not in os.environ})  # kernels inherit it
    env = run_environment()
    run_dir.mkdir(parents=True, exist_ok=True)
    print(expected_time(strategy, p["BASE"]), flush=True)
    seconds: dict[str, float] = {}
    t0 = time.time()
    for i, name in enumerate(names, 1):
        print(f"[course] ({i}/{len(names)}) {name} ...", flush=True)
        t = time.time()
        run_notebook(name, run_dir, p, source_dir=source_dir, progress=progress)
        seconds[name] = round(time.time() - t, 1)
        print(f"[course] ({i}/{len(names)}) {name} done in {seconds[name]:.0f} s -> {run_dir / (name + '.ipynb')}",
              flush=True)
    total = round(time.time() - t0, 1)
    (run_dir / "course.json").write_text(json.dumps({"strategy": strategy, "base": p["BASE"] or str(DEMO_BASE),
                                                     "params": p, "command": command, "environment": env,
                                                     "seconds": seconds, "total_seconds": total},
                                                    indent=2) + "\n", encoding="utf-8")
    return {"run_dir": run_dir, "notebooks": names, "seconds": seconds, "total_seconds": total}


def _declared_parameters(source_dir: Optional[PathLike], names: Sequence[str]) -> set:
    import papermill as pm
    declared: set = set()
    for name in names:
        src = Path(source_dir or NOTEBOOK_DIR) / f"{name}.ipynb"
        if src.is_file():
            declared |= set(pm.inspect_notebook(str(src)))
    return declared
