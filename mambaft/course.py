"""The course: the helpers the five notebooks call (`mambaft course`, in `mambaft.course_runner`,
runs them headless).

Each notebook reads its inputs from and writes its results to RUN_DIR (a papermill parameter):
    RUN_DIR/<notebook>.ipynb            the executed notebook (written by `mambaft course`)
    RUN_DIR/<notebook>/summary.json     what it measured (tests assert these)
    RUN_DIR/01_data_preparation/data    the prepared dataset
    RUN_DIR/03_finetune_multi_gpu/run   the fine-tuning run (metrics.jsonl, checkpoints, final/)

The strategy is the single dial. On a machine without a GPU the plan's GPU-sized numbers (10,000+
steps of 192 rows) would take days, so `course_config` replaces them with a CPU budget and says,
for every value that differs from the defaults, where it came from.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

ROOT = Path(__file__).resolve().parents[1]
DEMO_BASE = ROOT / "data" / "demo_base"
CONTEXT_REPAIR = DEMO_BASE / "context_repair"   # the context repair measured on the demo base (README)
NOTEBOOKS = ("00_diagnosis", "01_data_preparation", "02_smoke_test", "03_finetune_multi_gpu", "04_evaluation")
SUMMARY_FILE = "summary.json"
PathLike = Union[str, Path]

# --- the CPU budget ----------------------------------------------------------------------------------
# What the course trains when no GPU is visible. Measured here (2 shared cores, load ~10, bf16 autocast)
# the demo base does a step of 8 rows x <=256 tokens in ~0.9 s: 150 steps took 2.2 min and the whole
# quick course 6.2 min, so 300 steps keep it near 9 minutes, under the 15-minute target. Each strategy keeps its data sources and chat template: only sizes move.
CPU_BUDGET: dict[str, dict[str, Any]] = {
    # 8 rows x 1 accum x 1 process = 8 rows/step; x 300 steps = 2,400 rows, ~1.4 epochs of the ~1,770
    # rows that 800 examples per source leave after filtering (chatterbot keeps ~190 of its 800)
    "quick": dict(max_steps=300, max_examples_per_source=800),
    # 300 x 8 = 2,400 rows over 5 sources x <=500 examples: ~1 epoch
    "conversational": dict(max_steps=300, max_examples_per_source=500),
    # phase 1: 200 steps; phase 2: 100 steps on the domain (French offline: chatterbot_fr, wiki_fr)
    "specialized": dict(max_steps=200, phase2_steps=100, max_examples_per_source=400),
    # the smoke preset is already CPU-sized; only the steps shrink for the notebook tests
    "smoke": dict(max_steps=6, max_examples_per_source=120),
}
CPU_COMMON: dict[str, Any] = dict(
    num_gpus=1,          # one CPU process (notebook 03's NUM_PROCESSES)
    batch_size=8, grad_accum=1,
    max_seq_len=256,     # course rows: Q/A pairs are ~40-250 tokens; longer ones lose their oldest turns
    eval_batches=4, keep_last=12,
    precision="auto",    # bf16 autocast where the CPU has AMX/AVX512-BF16, else fp32
    # The schedule of a few hundred steps: 30 warmup steps (10 % of 300), cosine down to 5 % of the
    # peak, so the last checkpoints move little (at 1e-3 -> 1e-4 the step-250 and step-300 models of
    # one seed stopped in 0.25 and 0.93 of their replies).
    warmup_steps=30, min_lr_ratio=0.05,
    # 5 % of the conversations held out (~60 rows, was ~25): the val loss and the reply behaviour
    # that choose the checkpoint (eval_replies greedy replies to val questions) need more than 25.
    val_fraction=0.05, eval_replies=32,
)
# Checkpoints per phase on a CPU, every one kept (CPU_COMMON's keep_last), each evaluated (val loss,
# 32 greedy replies, the probes: ~3 s) for the checkpoint choice. The demo's replies swing from one
# checkpoint to the next (one seed: val-question stop rate 0.94, 0.69, 0.75 at steps 150, 200, 250), so
# the choice needs candidates: 12 x 89 MB on disk for the demo base.
CPU_CHECKPOINTS = 12
# The demo base is 7.7M parameters trained for minutes: it needs a larger step than the plan's lr
# (chosen for 124M). 1e-4 does not learn the end token within 150 steps. On quick's short answers 1e-3
# does within ~50, but its replies swing between stopping and looping from one checkpoint to the next
# (stop rate 0.93 at step 200, 0.25 at 250, natively); 5e-4 stopped in 0.81-0.86 of replies at steps
# 200-300 of the same data. The conversational mix (ShareGPT's long answers) needs 1e-3: at 5e-4 its
# held-out replies first stopped at step 175 of 300, and phase 1 of specialized (200 steps) never did.
DEMO_LR: dict[str, float] = {"quick": 5e-4, "conversational": 1e-3, "specialized": 1e-3, "smoke": 1e-3}


@dataclass
class CourseValues:
    """The overrides a notebook passes to make_config, and where each value comes from."""
    overrides: dict = field(default_factory=dict)
    origins: dict = field(default_factory=dict)   # key -> "preset <strategy>" | "CPU budget ..." | ...
    device: str = "cpu"
    base: Path = DEMO_BASE

    def explain(self, cfg) -> str:
        """One line per value that differs from the Config defaults, with its origin."""
        from mambaft.config import Config
        default = Config()
        lines = [f"strategy {cfg.strategy} on {self.device}; base {self.base}"]
        for key in sorted(set(self.origins) | {k for k, v in cfg.to_dict().items()
                                               if v != getattr(default, k)}):
            if key == "strategy":
                continue
            lines.append(f"  {key} = {getattr(cfg, key)!r}  ({self.origins.get(key, 'derived by make_config')})")
        lines.append(f"  => {cfg.global_batch} rows/step x {cfg.max_steps:,} steps = {cfg.rows_seen:,} rows")
        return "\n".join(lines)


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


def resolve_base(base: PathLike = "") -> Path:
    """"" -> the embedded demo base; else the given checkpoint (checked to exist)."""
    path = Path(base) if base else DEMO_BASE
    if not path.exists():
        hint = " (rebuild it: mambaft pretrain --out data/demo_base)" if not base else ""
        raise FileNotFoundError(f"base model {path}: no such file or folder{hint}")
    return path


def course_overrides(strategy: str, base: PathLike = "", *, device: Optional[str] = None,
                     max_steps: int = 0, seed: Optional[int] = None, **overrides: Any) -> CourseValues:
    """What the course changes in `make_config(strategy)`: the CPU budget when there is no GPU, then
    the notebook's explicit values (`max_steps` > 0, `seed`, `overrides`), each labelled with its origin.
    `seed` (the notebooks' SEED) becomes cfg.seed, which seeds the data split, mix and shuffle
    (`prepare`), the training order and init RNG (`finetune`), the lr sweep and evaluation sampling.

        values = course_overrides("quick")
        cfg = make_config("quick", **values.overrides)
        print(values.explain(cfg))"""
    from mambaft.config import PRESETS, STRATEGIES

    if strategy not in STRATEGIES:
        raise ValueError(f"STRATEGY={strategy!r}: expected one of {', '.join(STRATEGIES)}")
    device = device or ("cuda" if has_gpu() else "cpu")
    base_path = resolve_base(base)
    origins = {k: f"preset {strategy}" for k in PRESETS.get(strategy, {})}
    values: dict[str, Any] = {}
    if device == "cpu":
        for k, v in {**CPU_COMMON, **CPU_BUDGET.get(strategy, {})}.items():
            values[k] = v
            plan = PRESETS.get(strategy, {}).get(k)
            origins[k] = "CPU budget" + (f"; the plan's {plan!r} is sized for GPUs" if plan is not None else "")
        if base_path.resolve() == DEMO_BASE.resolve():
            values["lr"] = DEMO_LR[strategy]
            origins["lr"] = "CPU budget: the 7.7M-parameter demo base needs a larger lr than 124M"
    if max_steps and max_steps > 0:
        values["max_steps"] = int(max_steps)
        origins["max_steps"] = "notebook parameter MAX_STEPS"
    if device == "cpu":
        # CPU_CHECKPOINTS evaluated checkpoints, all kept: the checkpoint choice (mambaft.train.choice)
        # picks among them.
        values["save_every"] = values["eval_every"] = max(1, values["max_steps"] // CPU_CHECKPOINTS)
        origins["save_every"] = origins["eval_every"] = f"CPU budget: {CPU_CHECKPOINTS} checkpoints per run"
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


def course_config(strategy: str, base: PathLike = "", **kw: Any):
    """(cfg, values): make_config(strategy, **course_overrides(...).overrides) in one call."""
    from mambaft.config import make_config
    values = course_overrides(strategy, base, **kw)
    return make_config(strategy, **values.overrides), values


# --- files of a run ----------------------------------------------------------------------------------
def notebook_dir(run_dir: PathLike, notebook: str) -> Path:
    if notebook not in NOTEBOOKS:
        raise ValueError(f"notebook {notebook!r}: expected one of {', '.join(NOTEBOOKS)}")
    path = Path(run_dir) / notebook
    path.mkdir(parents=True, exist_ok=True)
    return path


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and o != o:  # NaN is not JSON
        return None
    if hasattr(o, "item") and callable(o.item):
        return o.item()
    return o


def write_summary(run_dir: PathLike, notebook: str, summary: dict) -> Path:
    """RUN_DIR/<notebook>/summary.json (NaN -> null), and return its path."""
    path = notebook_dir(run_dir, notebook) / SUMMARY_FILE
    path.write_text(json.dumps(_jsonable(summary), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
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


# --- what the notebooks record -----------------------------------------------------------------------
def diagnosis_summary(d: dict) -> dict:
    """The numbers of notebook 00 (from mambaft.evaluate.diagnosis.diagnose)."""
    sym, deg = d["symptoms"], d["symptoms"]["degeneration"]
    return {"model": d["model"], "receptive_field": d["receptive_field"]["receptive_field"],
            "receptive_field_saturated": d["receptive_field"]["saturated"],
            "parameters": d["facts"].get("parameters"), "dead_parameters": d["facts"].get("dead_parameters"),
            "p_end_mean": d["end_token"]["mean"], "p_end_above_half": d["end_token"]["above_half"],
            "prompts": len(sym["replies"]), "loop_rate": sym["rates"]["loop"],
            "no_stop_rate": sym["rates"]["no_stop"], "off_topic_rate": sym["rates"]["off_topic"],
            "end_token_rate": deg["end_token_rate"], "mean_new_tokens": deg["mean_new_tokens"],
            "replies": [{k: r[k] for k in ("id", "answer", "stopped_by", "loop", "rep_3")} for r in sym["replies"]]}


def plot_receptive_field(rf: dict, path: Optional[PathLike] = None):
    """Relative change of the last logits when the token k positions back changes (log scale)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    ax = fig.subplots()
    ks = list(range(1, len(rf["rel_change"]) + 1))
    ax.semilogy(ks, [max(c, 1e-18) for c in rf["rel_change"]], marker="o", ms=3)
    ax.axvline(rf["receptive_field"] - 0.5, color="grey", ls="--", lw=1)
    ax.set(xlabel="k: position of the changed token, counted back from the last one",
           ylabel="relative change of the logits",
           title=f"Measured reach: {rf['receptive_field']} tokens (below 1e-12 = no effect at all)")
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def data_summary(stats: dict, plan_course: dict, plan_gpu: dict) -> dict:
    """The numbers of notebook 01: rows, tokens, trained share, epochs under both plans."""
    phases = stats["phases"] if "phases" in stats else {"main": stats}
    out: dict = {"strategy": stats.get("strategy"), "phases": {}}
    for name, st in phases.items():
        t = st["totals"]
        out["phases"][name] = {
            "mode": st.get("mode"), "train_rows": t["train_rows"], "val_rows": t["val_rows"],
            "train_tokens": t["train_tokens"], "trained_tokens": t["train_trained_tokens"],
            "trained_fraction": t["train_trained_tokens"] / max(1, t["train_tokens"]),
            "truncated": t["truncated"], "bad_rows": t["bad_rows"],
            "sources": {s: v["train_rows"] for s, v in st["sources"].items()}}
    out["epochs_course"] = plan_course["epochs_per_source"]
    out["epochs_plan"] = plan_gpu["epochs_per_source"]
    out["warnings_course"] = plan_course["warnings"]
    out["warnings_plan"] = plan_gpu["warnings"]
    return out


def finetune_result(cfg, run: PathLike) -> dict:
    """result.json of the last phase of a fine-tuning run folder."""
    path = phase_dirs(cfg, run)[-1] / "result.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no finished fine-tuning run (run notebook 03 first)")
    return json.loads(path.read_text(encoding="utf-8"))


def checkpoints(cfg, run: PathLike) -> list[tuple[str, Path]]:
    """(label, model folder) of the kept checkpoints of every phase, oldest first, without the last
    one of the last phase (the final model is a copy of it)."""
    from mambaft.train import run_state as ck
    found = []
    dirs = phase_dirs(cfg, run)
    for d in dirs:
        prefix = f"{d.name} " if len(dirs) > 1 else ""
        found += [(f"{prefix}step {r.step}", r.path / ck.MODEL_DIRNAME) for r in ck.list_checkpoints(d)]
    return found[:-1]


def chosen_checkpoint(cfg, run: PathLike):
    """The checkpoint notebook 04 calls "fine-tuned": `mambaft.train.choice.choose_checkpoint` with
    rule cfg.checkpoint_choice over the kept checkpoints of the last phase and its metrics.jsonl."""
    from mambaft.train import run_state as ck
    from mambaft.train.choice import choose_checkpoint
    from mambaft.train.metrics import read_metrics
    d = phase_dirs(cfg, run)[-1]
    rows = read_metrics(d / "metrics.jsonl") if (d / "metrics.jsonl").is_file() else []
    return choose_checkpoint(ck.list_checkpoints(d), rows, cfg.checkpoint_choice)


def evaluation_models(cfg, run: PathLike, choice) -> list[tuple[str, Path]]:
    """(name, model folder) that notebook 04 compares: the base, phase 1's final model (specialized),
    the newest checkpoint when it is not the chosen one ("last step N"), and the chosen "fine-tuned"."""
    from mambaft.train import run_state as ck
    models = [("base", Path(cfg.base))]
    dirs = phase_dirs(cfg, run)
    if len(dirs) > 1:
        models.append(("phase 1", dirs[0] / "final"))
    newest = ck.latest_checkpoint(dirs[-1])
    if newest is not None and newest.step != choice.step:
        models.append((f"last step {newest.step}", newest.path / ck.MODEL_DIRNAME))
    models.append(("fine-tuned", Path(choice.path) / ck.MODEL_DIRNAME))
    return models


def choice_note(choice) -> str:
    """What notebook 04 prints about the checkpoint it evaluates, and why (one line per candidate)."""
    lines = [f'"fine-tuned" is the step-{choice.step} checkpoint ({choice.rule}): {choice.reason}']
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines += [f"  step {t['step']:>6}: val loss {fmt(t['val_loss'])}  stop {fmt(t['stop'])}  rep_3 {fmt(t['rep_3'])}"
              f"  empty {fmt(t['empty'])}  score {fmt(t['score'])}{'  <- chosen' if t['step'] == choice.step else ''}"
              for t in choice.table]
    return "\n".join(lines)


def probe_behaviour_by_lang(results: Sequence[dict]) -> dict:
    """{lang: {"stop_rate", "rep_3", "pass_rate", "n"}} over the probe replies of one language (the
    specialized course is held to its bounds on the EN and on the FR probes separately)."""
    import statistics

    from mambaft.evaluate.metrics import repeated_ngram_rate
    out = {}
    for lang in sorted({r.get("lang") for r in results if r.get("lang")}):
        rs = [r for r in results if r.get("lang") == lang]
        reps = [x for x in (repeated_ngram_rate(r.get("answer") or "", 3) for r in rs) if x is not None]
        out[lang] = {"stop_rate": 1.0 - sum(bool(r.get("hit_limit")) for r in rs) / len(rs),
                     "rep_3": statistics.fmean(reps) if reps else 0.0,
                     "pass_rate": sum(bool(r.get("passed")) for r in rs) / len(rs), "n": len(rs)}
    return out


def behaviour_table(rows: dict) -> str:
    """One line per model: how its replies end and loop, overall and on each language's probes."""
    f = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    lines = []
    for name, r in rows.items():
        langs = "  ".join(f"{lang}: stop {f(b['stop_rate'])} rep_3 {f(b['rep_3'])} pass {f(b['pass_rate'])}"
                          for lang, b in (r.get("probes_by_lang") or {}).items())
        lines.append(f"{name:>14}: stop {f(r['stop_rate'])}  rep_3 {f(r['rep_3'])}  tokens {f(r['mean_new_tokens'], 1)}"
                     f"  end token {f(r['end_token_rate'])}  probes {f(r['probe_pass_rate'])}  | probes {langs}")
    return "\n".join(lines)


def evaluation_summary(results: Sequence[dict]) -> dict:
    """Per model: how replies ended, p(end), probe pass rates, loops, BLEU, perplexities."""
    rows = {}
    for r in results:
        deg, probes = r.get("degeneration") or {}, (r.get("probes") or {}).get("summary") or {}
        ans, ppl = r.get("answers") or {}, r.get("perplexity") or {}
        limit = deg.get("limit_rate")
        rows[r["name"]] = {
            "end_token_rate": deg.get("end_token_rate"), "stop_string_rate": deg.get("stop_string_rate"),
            "limit_rate": limit, "stop_rate": None if limit is None else 1.0 - limit,
            "mean_new_tokens": deg.get("mean_new_tokens"), "rep_3": deg.get("rep_3"),
            "p_end_mean": (r.get("end_token") or {}).get("mean"),
            "probe_pass_rate": probes.get("pass_rate"), "probe_by_kind": probes.get("by_kind"),
            "bleu": ans.get("bleu"), "chrf": ans.get("chrf"),
            "probes_by_lang": probe_behaviour_by_lang((r.get("probes") or {}).get("results") or []),
            "text_ppl": {k: v.get("ppl") for k, v in (ppl.get("text") or {}).items() if isinstance(v, dict)},
            "errors": r.get("errors") or {}}
    return rows


def smoke_overrides(steps: int) -> dict:
    """Notebook 02's short run: `steps` steps, one checkpoint at the end (both phases for specialized)."""
    steps = max(1, int(steps))
    return {"max_steps": steps, "phase2_steps": steps, "save_every": steps, "eval_every": steps,
            "keep_last": 1, "warmup_steps": max(1, min(10, steps // 5))}


def first_phase_data(cfg, run_dir: PathLike) -> Path:
    """The prepared data of the first phase (the lr sweep trains on it)."""
    d = data_dir(run_dir)
    return d / "phase1" if cfg.strategy == "specialized" else d


def smoke_summary(res: dict, sweep: Optional[dict], table) -> dict:
    losses = res.get("losses") or []
    return {"steps": res.get("steps"), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None, "losses": losses, "final": res.get("final"),
            "val_loss": res.get("val_loss"),
            "best_lr": sweep["best_lr"] if sweep else None, "sweep_scores": sweep["scores"] if sweep else None,
            "generations": table.records()}


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


def finetune_summary(cfg, run: PathLike, result: dict, cmd: Sequence[str], num_processes: int) -> dict:
    """The numbers of notebook 03, and whether this kernel touched CUDA (it must not)."""
    torch = sys.modules.get("torch")
    cuda = bool(torch is not None and torch.cuda.is_initialized())
    losses = result.get("losses") or []
    phases = {}
    for d in phase_dirs(cfg, run):
        if (d / "result.json").is_file():
            r = json.loads((d / "result.json").read_text(encoding="utf-8"))
            phases[d.name] = {k: r.get(k) for k in ("steps", "val_loss", "best_val_loss", "final")}
    return {"steps": result.get("steps"), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None, "val_loss": result.get("val_loss"),
            "best_checkpoint": result.get("best_checkpoint"), "final": result.get("final"),
            "checkpoints": [str(p) for _, p in checkpoints(cfg, run)], "phases": phases,
            "num_processes": num_processes, "command": " ".join(map(str, cmd)),
            "torch_in_kernel": torch is not None, "cuda_in_kernel": cuda}


def benchmarks(limit: int) -> tuple:
    """The multiple-choice benchmarks notebook 04 runs (none when limit is 0)."""
    if limit <= 0:
        return ()
    from mambaft.evaluate.benchmarks import BENCHMARKS
    return tuple(BENCHMARKS)


def context_curves(base: PathLike, final: PathLike, windows: int, out: PathLike, length: int = 128):
    """Loss by token position and the name-recall probe (mambaft.evaluate.context), base vs
    fine-tuned, on held-out wiki_en text; None when windows is 0 or the module is not installed."""
    if windows <= 0:
        return None
    try:
        from mambaft.evaluate.context import measure_context
    except ImportError as e:
        print(f"context measurement skipped: {e}")
        return None
    from mambaft.checkpoint import load_checkpoint
    from mambaft.data.text import load_text_documents
    m0, info = load_checkpoint(base)
    m1, _ = load_checkpoint(final)
    texts = [d["text"] for d in load_text_documents("wiki_en", 4 * windows, split="heldout", progress=False)]
    rep = measure_context({"base": m0, "fine-tuned": m1}, info.tokenizer, texts, length=length,
                          windows=windows, n_fillers=max(1, windows // 4))
    rep.save(Path(out))
    return rep


def context_repair(folder: PathLike = CONTEXT_REPAIR):
    """The shipped report of the context repair on the demo base (`python -m mambaft.evaluate.context
    demo --base data/demo_base --freeze-original ...`, README "Repairing the context")."""
    from mambaft.evaluate.context import ContextReport
    return ContextReport.load(Path(folder))


def final_summary(rows: dict, table, context, files: dict, choice=None) -> dict:
    """The numbers of notebook 04: per model, the headline comparisons, and which checkpoint is
    "fine-tuned" and why."""
    pick = lambda key: {name: r[key] for name, r in rows.items()}  # noqa: E731
    chosen = None if choice is None else {"step": choice.step, "path": str(choice.path), "rule": choice.rule,
                                          "reason": choice.reason, "candidates": choice.table}
    return {"models": rows, "chosen": chosen, "stop_rate": pick("stop_rate"), "rep_3": pick("rep_3"),
            "mean_new_tokens": pick("mean_new_tokens"), "end_token_rate": pick("end_token_rate"),
            "probe_pass_rate": pick("probe_pass_rate"), "p_end_mean": pick("p_end_mean"),
            "bleu": pick("bleu"), "answers": table.records(),
            "context": context.summary if context is not None else None, "files": files}


# --- notebook 04: the model for transformers and the Hub ---------------------------------------------
HF_DIRNAME = "hf_model"


def export_hf(cfg, run_dir: PathLike, model_dir: PathLike, evaluation: Optional[PathLike] = None) -> Path:
    """The fine-tuned model as a transformers folder, RUN_DIR/04_evaluation/hf_model (mambaft.hf.export),
    its model card filled from the run: result.json beside the model, the prepared data's sources and
    licences (stats.json), and the evaluation table (`evaluation`, a markdown file)."""
    from mambaft.checkpoint import load_checkpoint, save_checkpoint
    from mambaft.hf.card import sources_from_stats
    from mambaft.hf.export import run_facts

    card = run_facts(model_dir)
    stats = data_dir(run_dir) / "stats.json"
    if stats.is_file():
        card["sources"] = sources_from_stats(json.loads(stats.read_text(encoding="utf-8")))
    if evaluation is not None and Path(evaluation).is_file():
        card["evaluation"] = Path(evaluation).read_text(encoding="utf-8")
    model, info = load_checkpoint(model_dir)
    return save_checkpoint(model, notebook_dir(run_dir, "04_evaluation") / HF_DIRNAME, "hf",
                           template=info.template, tokenizer=info.tokenizer, step=info.step,
                           epoch=info.epoch or 0, training=info.training, card=card)


def transformers_lines(path: PathLike) -> str:
    """The two lines that load an exported folder with transformers (no mambaft needed)."""
    return ("from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"tok = AutoTokenizer.from_pretrained({str(path)!r}, trust_remote_code=True)\n"
            f"model = AutoModelForCausalLM.from_pretrained({str(path)!r}, trust_remote_code=True)")


FIRST_PROMPTS = ("What is the capital of France?", "Tell me about the Moon.", "Say hello.",
                 "Quelle est la capitale de la France ?")


# --- notebook 03: accelerate launch as a subprocess --------------------------------------------------
def finetune_command(cfg, base: PathLike, data: PathLike, out: PathLike, num_processes: int = 1,
                     accelerate_config: str = "", extra: Sequence[str] = ()) -> list[str]:
    """`accelerate launch ... -m mambaft.train.finetune ...` with every course value passed as --set,
    so the subprocess trains exactly the notebook's cfg."""
    from mambaft.config import Config
    default = Config()
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        cmd += ["--config_file", str(accelerate_config)]
    else:
        cmd += ["--num_processes", str(num_processes), "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no"]
        if not has_gpu():
            cmd += ["--cpu"]
        elif num_processes > 1:
            cmd += ["--multi_gpu"]
    cmd += ["-m", "mambaft.train.finetune", "--strategy", cfg.strategy, "--base", str(base),
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
