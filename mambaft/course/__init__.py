"""The course: the run-folder layout of the five notebooks and the values they train with. What
they record is in `summaries`, the fine-tune subprocess of notebook 03 in `launch`, the models of a run
(checkpoints, the chosen one, the export) in `models`, the papermill runner (`mambaft course`) in
`runner`, the ranges over several runs (`mambaft ranges`) in `ranges`, what the base knows in
`knowledge`, notebook 02's step worked by hand in `worked`, the probes' answers at each evaluation (see
it learn) in `learning`, the notebooks' quiet set-up in `notebook`. Notebooks write
`from mambaft import course` and call `course.NAME` for any of them (loaded on first use).

Each notebook reads its inputs from and writes its results to RUN_DIR (a papermill parameter):
    RUN_DIR/<notebook>.ipynb            the executed notebook (written by `mambaft course`)
    RUN_DIR/<notebook>/summary.json     what it measured (tests assert these)
    RUN_DIR/01_data_preparation/data    the prepared dataset
    RUN_DIR/03_finetune_multi_gpu/run   the fine-tuning run (metrics.jsonl, checkpoints, final/)

The strategy is the single dial. On a machine without a GPU the plan's GPU-sized numbers (10,000+
steps of 192 rows) would take days, so `course_overrides` asks make_config for its CPU budget layer
and says, for every value that differs from the defaults, where it came from.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

# The CPU budget tables are read here as course.CPU_BUDGET etc. (tests, notebooks); they live in config.
from mambaft.config import (CPU_BUDGET, CPU_CHECKPOINTS, CPU_COMMON, DEMO_BASE, DEMO_LR, ROOT,  # noqa: F401
                            STRATEGIES, Config, config_origins, make_config, resolve_base)

CONTEXT_REPAIR = DEMO_BASE / "context_repair"   # the context repair measured on the demo base (README)
NOTEBOOKS = ("00_diagnosis", "01_data_preparation", "02_smoke_test", "03_finetune_multi_gpu", "04_evaluation")
SUMMARY_FILE = "summary.json"
PathLike = Union[str, Path]
FIRST_PROMPTS = ("What is the capital of France?", "Tell me about the Moon.", "Say hello.",
                 "Quelle est la capitale de la France ?")


@dataclass
class CourseValues:
    """The overrides a notebook passes to make_config, and where each value comes from."""
    overrides: dict = field(default_factory=dict)
    origins: dict = field(default_factory=dict)   # key -> "preset <strategy>" | "CPU budget ..." | ...
    device: str = "cpu"
    base: Path = DEMO_BASE

    def explain(self, cfg) -> str:
        """One line per value that differs from the Config defaults, with its origin."""
        default = Config()
        lines = [f"strategy {cfg.strategy} on {self.device}; base {self.base}"]
        for key in sorted(set(self.origins) | {k for k, v in cfg.to_dict().items()
                                               if v != getattr(default, k)}):
            if key == "strategy":
                continue
            lines.append(f"  {key} = {getattr(cfg, key)!r}  ({self.origins.get(key, 'derived by make_config')})")
        lines.append(f"  => {cfg.global_batch} rows/step x {cfg.max_steps:,} steps = {cfg.rows_seen:,} rows")
        return "\n".join(lines)

    def table(self, cfg) -> str:
        """What this run changes in the strategy's preset (`make_config(strategy)`, the plan's GPU
        numbers), one row per value: the preset's value, this run's, and where it came from."""
        preset = make_config(cfg.strategy).to_dict()
        changed = [k for k, v in cfg.to_dict().items() if k != "strategy" and v != preset.get(k)]
        rows = [(k, _short(preset.get(k)), _short(getattr(cfg, k)), self.origins.get(k, "derived by make_config"))
                for k in sorted(changed)]
        w = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(("value", "preset", "this run"))]
        lines = [f"strategy {cfg.strategy} on {self.device}: {len(rows)} values differ from the preset",
                 f"  {'value':<{w[0]}}  {'preset':>{w[1]}}  {'this run':>{w[2]}}  origin"]
        lines += [f"  {k:<{w[0]}}  {a:>{w[1]}}  {b:>{w[2]}}  {o}" for k, a, b, o in rows]
        lines.append(f"  => {cfg.global_batch} rows/step x {cfg.max_steps:,} steps = {cfg.rows_seen:,} rows")
        return "\n".join(lines)

    def line(self, cfg) -> str:
        """The configuration in one line (notebook 01 prints the full `table`)."""
        return (f"strategy {cfg.strategy} on {self.device}: {cfg.global_batch} rows/step x {cfg.max_steps:,} "
                f"steps, lr {cfg.lr:g}, seed {cfg.seed}, base {self.base} (what differs from the preset: "
                f"notebook 01)")


def _short(value: Any, width: int = 28) -> str:
    """A config value in at most `width` characters (source dicts are long)."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def has_gpu() -> bool:
    """Is an NVIDIA GPU visible? Asked through `nvidia-smi -L`, so that the kernel of notebook 03
    never initialises CUDA (its training runs in a subprocess); torch is asked only without it."""
    import shutil
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
            return out.returncode == 0 and "GPU" in out.stdout
        except (OSError, subprocess.SubprocessError):
            return False
    try:
        import torch
        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover
        return False


def course_overrides(strategy: str, base: PathLike = "", *, device: Optional[str] = None,
                     max_steps: int = 0, seed: Optional[int] = None, **overrides: Any) -> CourseValues:
    """What the course passes to `make_config(strategy)`: budget "cpu" when there is no GPU (the layer
    of mambaft.config: CPU_BUDGET, CPU_COMMON, DEMO_LR), then the notebook's explicit values
    (`max_steps` > 0, `seed`, `overrides`), each labelled with its origin.
    `seed` (the notebooks' SEED) becomes cfg.seed, which seeds the data split, mix and shuffle
    (`prepare`), the training order and init RNG (`finetune`), the lr sweep and evaluation sampling.

        values = course_overrides("quick")
        cfg = make_config("quick", **values.overrides)
        print(values.explain(cfg))"""
    if strategy not in STRATEGIES:
        raise ValueError(f"STRATEGY={strategy!r}: expected one of {', '.join(STRATEGIES)}")
    device = device or ("cuda" if has_gpu() else "cpu")
    base_path = resolve_base(base)
    budget = "cpu" if device == "cpu" else "plan"
    values: dict[str, Any] = {"budget": budget}
    origins = config_origins(strategy, budget, base=str(base_path))
    if max_steps and max_steps > 0:
        values["max_steps"] = int(max_steps)
        origins["max_steps"] = "notebook parameter MAX_STEPS"
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"SEED={seed!r}: expected an integer >= 0")
        values["seed"] = seed
        origins["seed"] = "notebook parameter SEED"
    for k, v in overrides.items():
        values[k] = v
        origins[k] = "notebook parameter"
    values["base"] = str(base_path)
    origins["base"] = "notebook parameter BASE" if base else 'the embedded demo base (BASE = "")'
    return CourseValues(overrides=values, origins=origins, device=device, base=base_path)


def smoke_overrides(steps: int) -> dict:
    """Notebook 02's short run: `steps` steps, one checkpoint at the end (both phases for specialized)."""
    steps = max(1, int(steps))
    return {"max_steps": steps, "phase2_steps": steps, "save_every": steps, "eval_every": steps,
            "keep_last": 1, "warmup_steps": max(1, min(10, steps // 5))}


# --- files of a run ----------------------------------------------------------------------------------
def notebook_dir(run_dir: PathLike, notebook: str) -> Path:
    if notebook not in NOTEBOOKS:
        raise ValueError(f"notebook {notebook!r}: expected one of {', '.join(NOTEBOOKS)}")
    path = Path(run_dir) / notebook
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_summary(run_dir: PathLike, notebook: str, summary: dict) -> Path:
    """RUN_DIR/<notebook>/summary.json (NaN -> null), and return its path."""
    from mambaft.evaluate.suite import json_safe

    path = notebook_dir(run_dir, notebook) / SUMMARY_FILE
    path.write_text(json.dumps(json_safe(summary), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_summary(run_dir: PathLike, notebook: str) -> dict:
    path = Path(run_dir) / notebook / SUMMARY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: run notebook {notebook} first (it writes this file)")
    return json.loads(path.read_text(encoding="utf-8"))


def data_dir(run_dir: PathLike) -> Path:
    return Path(run_dir) / "01_data_preparation" / "data"


def finetune_dir(run_dir: PathLike) -> Path:
    return Path(run_dir) / "03_finetune_multi_gpu" / "run"


def phase_dirs(cfg, out: PathLike) -> list[Path]:
    """Folders holding metrics.jsonl / result.json, in training order (specialized has two phases)."""
    out = Path(out)
    return [out / "phase1", out / "phase2"] if cfg.strategy == "specialized" else [out]


def eval_data_dir(cfg, run_dir: PathLike) -> Path:
    """The prepared data whose validation split evaluation uses (phase 2's for specialized)."""
    d = data_dir(run_dir)
    return d / "phase2" if cfg.strategy == "specialized" else d


def first_phase_data(cfg, run_dir: PathLike) -> Path:
    """The prepared data of the first phase (the lr sweep trains on it)."""
    d = data_dir(run_dir)
    return d / "phase1" if cfg.strategy == "specialized" else d


# The notebooks' helpers in the submodules, as `course.NAME` (imported on first use: the submodules
# import this module, never the other way round at import time).
_LAZY = {
    "diagnosis_summary": "summaries",
    "plot_receptive_field": "summaries",
    "data_summary": "summaries",
    "smoke_summary": "summaries",
    "finetune_summary": "summaries",
    "choice_note": "summaries",
    "probe_behaviour_by_lang": "summaries",
    "behaviour_table": "summaries",
    "main_table": "summaries",
    "evaluation_summary": "summaries",
    "verdict": "summaries",
    "final_summary": "summaries",
    "base_continuations": "knowledge",
    "FACTS": "knowledge",
    "first_batch": "worked",
    "worked_model": "worked",
    "worked_summary": "worked",
    "LOSS_TOLERANCE": "worked",
    "probe_table": "learning",
    "probe_tables": "learning",
    "behaviour_reading": "learning",
    "setup_notebook": "notebook",
    "output_to": "notebook",
    "finetune_command": "launch",
    "num_processes": "launch",
    "visible_gpus": "launch",
    "preflight_env": "launch",
    "check_world_size": "launch",
    "estimate_run": "launch",
    "child_env": "launch",
    "launch_finetune": "launch",
    "check_finished": "launch",
    "follow_plan": "launch",
    "finetune_result": "models",
    "checkpoints": "models",
    "chosen_checkpoint": "models",
    "evaluation_models": "models",
    "chat_models": "models",
    "benchmarks": "models",
    "context_curves": "models",
    "context_repair": "models",
    "HF_DIRNAME": "models",
    "export_hf": "models",
    "transformers_lines": "models",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
