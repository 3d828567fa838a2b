"""One fine-tuning run of a MambaSWELU base model on a prepared dataset: `finetune(cfg, base, data_dir,
out_dir)`, the same in a notebook, under `mambaft finetune` (mambaft.cli.finetune) and in each process of
`accelerate launch -m mambaft.finetune`.

Running again on the same out_dir resumes from the newest complete checkpoint.
Strategy "specialized": phase 1 trains on DATA/phase1 into OUT/phase1, then phase 2 starts from
OUT/phase1/final and trains cfg.phase2_steps on DATA/phase2 into OUT/phase2.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Optional, Union

import torch

from mambaft import durable, outdir, runtime
from mambaft.config import Config, ConfigError, resolve_base, saved_config_dict
from mambaft.errors import DataError

from . import run_inputs
from . import run_state as ck
from .evaluation import load_heldout_texts, load_probes
from .loop import PhaseInputs, run_phase, write_final
from .plan import plan_lines
from .runlock import RunLock

PathLike = Union[str, Path]
REQUIRED_COLUMNS = ("input_ids", "labels")


def load_data(data_dir: PathLike):
    """A `mambaft prepare` folder -> DatasetDict (train, val), with errors that name the folder."""
    from mambaft.data import load_prepared

    path = Path(data_dir)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such data folder (write one with `mambaft prepare`)")
    dd = load_prepared(path)    # refuses folders without prepare's completion marker
    if "train" not in dd:
        raise DataError(f"{path}: no 'train' split (splits: {', '.join(dd.keys())})")
    missing = [c for c in REQUIRED_COLUMNS if c not in dd["train"].column_names]
    if missing:
        raise DataError(f"{path}: train split lacks column(s) {missing} (has {dd['train'].column_names})")
    return dd


def load_base(base: Path, cfg: Config, say) -> tuple:
    """Base checkpoint -> (model on CPU, info); upgraded to selective when the config asks for it;
    the dead x_proj/dt_proj frozen (still saved) for the as-trained architecture."""
    from mambaft.checkpoint import load_checkpoint

    model, info = load_checkpoint(base, allow_nonfinite=True)   # refused by the caller, naming them
    if cfg.architecture == "selective" and model.config.architecture == "original":
        from mambaft.model.selective import upgrade_to_selective
        model = upgrade_to_selective(model, ssm_state=cfg.ssm_state)
        say(f"upgraded {base} to the selective architecture (ssm_state {cfg.ssm_state})")
    return model, info


def _freeze(model, say) -> None:
    if hasattr(model, "freeze_dead"):  # selective models keep the original's dead projections too
        n = model.freeze_dead()
        say(f"froze {n:,} dead x_proj/dt_proj parameters (kept in every checkpoint)")


def _chat_template(data_dir: Path, info, say):
    from mambaft.template import TEMPLATE_FILE, ChatTemplate
    if not (data_dir / TEMPLATE_FILE).is_file():
        return info.template
    tpl = ChatTemplate.load(data_dir)   # what the rows were rendered with: the model must keep it
    if not info.template_source.startswith("default") and info.template != tpl:
        say(f"note: the data was rendered with template {tpl.name!r}, the base carries "
            f"{info.template.name!r}; the fine-tuned model keeps the data's")
    return tpl


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _heldout_names(cfg: Config) -> list:
    names = ["wiki_en"]
    if "fr" in cfg.languages or cfg.domain == "french":
        names.append("wiki_fr")
    return names


RUN_FILES = ("metrics.jsonl", "result.json", "final_model.pt", ck.CONFIG_FILE)
RUN_DIRS = (ck.CKPT_DIRNAME, "probes", "final")


def move_run_aside(out_dir: Path) -> Optional[Path]:
    """--no-resume: move the previous run's outputs into OUT/replaced-<UTC time>/ (never deleted:
    an input of this run may live there, and the user may still want it). None if there was none."""
    present = [out_dir / n for n in RUN_DIRS + RUN_FILES if (out_dir / n).exists()]
    if not any(p.name in (ck.CKPT_DIRNAME, "metrics.jsonl", "final") for p in present):
        return None
    dest = out_dir / time.strftime("replaced-%Y%m%d-%H%M%S", time.gmtime())
    n = 1
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{dest.name.split('.')[0]}.{n}")
    dest.mkdir()
    for p in present:
        os.replace(p, dest / p.name)
    return dest


def _check_row_lengths(train, cfg: Config, data_dir: Path) -> None:
    """max_seq_len is honoured, not only shown in the plan: rows prepared for a longer one are refused
    here (the batches would otherwise take them up to the model's position table)."""
    col = "n_tokens" if "n_tokens" in train.column_names else None
    if not len(train):
        return
    longest = int(max(train[col])) if col else max(len(ids) for ids in train["input_ids"])
    if longest > cfg.max_seq_len:
        raise DataError(f"{data_dir}: its longest training row has {longest:,} tokens, more than max_seq_len="
                        f"{cfg.max_seq_len:,}: prepare the data with this max_seq_len (mambaft prepare --set "
                        f"max_seq_len={cfg.max_seq_len}), or train with --set max_seq_len={longest} or more")


def _phase(cfg: Config, base: Path, data_dir: Path, out_dir: Path, accelerator, *, resume: bool,
           progress: bool, heldout_texts, probes, opts: dict) -> dict:
    say = (lambda m: print(m, flush=True)) if accelerator.is_main_process else (lambda m: None)
    # Every input is loaded and checked before anything in out_dir changes (the base may live there).
    dd = load_data(data_dir)
    _check_row_lengths(dd["train"], cfg, data_dir)
    lock = RunLock(out_dir).acquire(say) if accelerator.is_main_process else None
    try:
        return _locked_phase(cfg, base, data_dir, out_dir, accelerator, dd, say, resume=resume,
                             progress=progress, heldout_texts=heldout_texts, probes=probes, opts=opts)
    finally:
        if lock is not None:
            lock.release()


def _check_same_run(out_dir: Path, latest, now: dict, cfg: Config, say, *, resume_anyway: bool) -> None:
    """Refuse a resume whose base, data or config differ from the run's (mambaft.train.run_inputs).
    A run recorded before run_inputs.json existed is compared on its checkpoint's config alone."""
    if (out_dir / run_inputs.RECORD).is_file():
        run_inputs.check_resume(out_dir, now, resume_anyway=resume_anyway, say=say)
        return
    say(f"note: {out_dir / run_inputs.RECORD} is absent (a run started before inputs were recorded): "
        "its base and data cannot be compared")
    try:
        saved = saved_config_dict(json.loads((latest.path / ck.CONFIG_FILE).read_text(encoding="utf-8")))
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        say(f"note: {latest.path / ck.CONFIG_FILE} is unreadable ({type(e).__name__}): its config is not compared")
        return
    changed = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in sorted(cfg.to_dict().items())
               if k in saved and run_inputs.canonical(saved[k]) != run_inputs.canonical(v)]
    if changed:
        say("note: config differs from the checkpoint's: " + ", ".join(changed))


def _load_start(cfg: Config, base: Path, latest, say) -> tuple:
    """The model this phase starts from (newest checkpoint, else the base); info.nonfinite names any
    NaN/inf tensors (the caller falls back to an older checkpoint, or refuses a base)."""
    from mambaft.checkpoint import load_checkpoint
    source = latest.path / ck.MODEL_DIRNAME if latest is not None else base
    if latest is not None:
        return load_checkpoint(source, allow_nonfinite=True)
    return load_base(base, cfg, say)


def _start_point(cfg: Config, base: Path, out_dir: Path, accelerator, say, *, resume: bool,
                 trust_legacy: bool) -> tuple:
    """(checkpoint to resume or None, model, info): the newest checkpoint that verifies and holds
    finite weights; one with NaN/inf weights is set aside like a damaged one, with a line."""
    from mambaft.checkpoint import CheckpointError
    while True:
        if accelerator.is_main_process and resume:
            ck.resume_point(out_dir, say, trust_legacy=trust_legacy)   # sets aside what does not verify
        accelerator.wait_for_everyone()
        latest = ck.latest_checkpoint(out_dir) if resume else None
        model, info = _load_start(cfg, base, latest, say)
        if not info.nonfinite:
            return latest, model, info
        if latest is None:
            raise CheckpointError(f"{base}: {len(info.nonfinite)} tensors hold NaN/inf (e.g. "
                                  f"{', '.join(info.nonfinite[:3])}); refusing to fine-tune from it")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            say("note: " + ck.set_aside(latest, f"{len(info.nonfinite)} tensors hold NaN/inf, e.g. "
                                        f"{info.nonfinite[0]}") + "; trying the next older one")


def _locked_phase(cfg: Config, base: Path, data_dir: Path, out_dir: Path, accelerator, dd, say, *,
                  resume: bool, progress: bool, heldout_texts, probes, opts: dict) -> dict:
    if accelerator.is_main_process:
        removed = ck.clean_partial(out_dir)
        if removed:
            say(f"removed {len(removed)} half-written checkpoint folder(s) left by a killed run")
    latest, model, info = _start_point(cfg, base, out_dir, accelerator, say, resume=resume,
                                       trust_legacy=opts.get("trust_legacy", False))
    if accelerator.is_main_process:
        now = run_inputs.fingerprints(base, data_dir, cfg.to_dict())
        if not resume or latest is None:
            moved = move_run_aside(out_dir)
            if moved is not None:
                why = ("--no-resume: starting over" if not resume else
                       "no complete checkpoint to resume from: starting from the base")
                say(f"{why} in {out_dir}; the previous run was moved to {moved} "
                    "(delete it when you no longer need it)")
        else:
            _check_same_run(out_dir, latest, now, cfg, say, resume_anyway=opts.get("resume_anyway", False))
            ck.trim_metrics(out_dir, latest.step, say)
        run_inputs.write_record(out_dir, now)
    accelerator.wait_for_everyone()
    _freeze(model, say)
    template = _chat_template(data_dir, info, say)
    tokenizer = info.tokenizer
    if accelerator.is_main_process:
        (out_dir / ck.CONFIG_FILE).write_text(cfg.to_json() + "\n", encoding="utf-8")
    stats = None
    if (data_dir / "stats.json").is_file():
        stats = json.loads((data_dir / "stats.json").read_text(encoding="utf-8"))
    train = dd["train"]
    lines, warnings = plan_lines(cfg, world_size=accelerator.num_processes,
                                 train_sources=train["source"] if "source" in train.column_names else None,
                                 stats=stats, n_params=sum(p.numel() for p in model.parameters()),
                                 cli_overrides=opts.get("cli_overrides"))
    lines = [f"base {base if latest is None else latest.path}, data {data_dir} "
             f"({len(train):,} train / {len(dd['val']) if 'val' in dd else 0:,} val rows), out {out_dir}"] \
        + lines + [f"WARNING: {w}" for w in warnings]
    if heldout_texts is None:
        heldout_texts, note = load_heldout_texts(_heldout_names(cfg)) if accelerator.is_main_process else ({}, "")
        lines.append(note)
    if probes is None:
        probes, note = load_probes()
        lines.append(note)
    inp = PhaseInputs(model=model, template=template, tokenizer=tokenizer,
                      train=train.select_columns(list(REQUIRED_COLUMNS)),
                      val=dd["val"] if "val" in dd and len(dd["val"]) else None, out_dir=out_dir,
                      resume_from=latest, heldout_texts=heldout_texts or {}, probes=probes or [],
                      probe_tokens=opts.get("probe_tokens", 64), heldout_tokens=opts.get("heldout_tokens", 8192),
                      eval_at_start=opts.get("eval_at_start", True), progress=progress,
                      max_bad_steps=opts.get("max_bad_steps", 5), plan_text=lines,
                      allow_world_size_change=opts.get("allow_world_size_change", False))
    summary = run_phase(cfg, inp, accelerator)
    newest = ck.latest_checkpoint(out_dir)
    result = write_final(cfg, out_dir, accelerator, newest.path)
    result["resumed_from"] = latest.step if latest is not None else None
    result["world_size"] = summary["world_size"]
    say(f"done: {result.get('steps')} steps, final model {result.get('final')}"
        + (f", best val loss {result['best_val_loss']:.4f} at {result['best_checkpoint']}"
           if result.get("best_val_loss") is not None else ""))
    return result


def check_launch_env(cfg: Config, device: torch.device) -> None:
    """Refuse an accelerate environment the loop would silently disagree with: its mixed precision
    (Accelerator() reads ACCELERATE_MIXED_PRECISION and autocasts the forward itself, so an "fp32" run
    computed in bf16 while the metrics said fp32), and FSDP / DeepSpeed, which the loop does not drive."""
    for var, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(var, "false").lower() in ("true", "1", "yes"):
            raise ConfigError(f"the accelerate config asks for {name} ({var}=true): this loop supports plain "
                              "data parallel only (distributed_type MULTI_GPU or MULTI_CPU); use such a config")
    env = os.environ.get("ACCELERATE_MIXED_PRECISION", "").strip().lower()
    mine = runtime.resolve_precision(cfg.precision, device)
    if env and env != "no" and env != mine:
        raise ConfigError(f"accelerate's mixed precision is {env!r} (ACCELERATE_MIXED_PRECISION, from `accelerate "
                          f"config` or --mixed_precision) but this run's precision is {mine!r} (precision="
                          f"{cfg.precision!r}): make them agree (--set precision={env}, or launch with "
                          "--mixed_precision no)")


def finetune(cfg: Config, base: Optional[PathLike] = None, data_dir: Optional[PathLike] = None,
             out_dir: Optional[PathLike] = None, *, resume: bool = True, progress: bool = True,
             threads: Optional[int] = None, device: Optional[str] = None,
             heldout_texts: Optional[dict] = None, probes: Optional[list] = None,
             probe_tokens: int = 64, heldout_tokens: int = 8192, eval_at_start: bool = True,
             max_bad_steps: int = 5, tensorboard: bool = False,
             cli_overrides: Optional[dict] = None, allow_world_size_change: bool = False,
             force: bool = False, resume_anyway: bool = False, trust_legacy: bool = False) -> dict:
    """Fine-tune `base` on the prepared `data_dir` into `out_dir`. Works the same in a notebook, from
    the CLI, and in each process of `accelerate launch`.

    Args:
        cfg: a resolved config (`make_config(strategy, **overrides)`).
        base: original .pt or mambaft model folder (default cfg.base, else the demo base).
        resume: continue from the newest intact checkpoint in out_dir (False: move the old run aside
            into out_dir/replaced-<time>/ and start over).
        threads: CPU threads per process (default: the cores divided among the local processes).
        heldout_texts: {name: [text, ...]} for held-out perplexity; None loads wiki_en (and wiki_fr
            for French) from mambaft.data.text; {} disables it.
        probes: probe objects (.id, .messages, .check); None loads mambaft.evaluate.probes.PROBES;
            [] disables them.
        allow_world_size_change: resume a checkpoint saved with another number of processes (the
            global batch, data order and RNG change; refused without it).
        force: out_dir holds files that are not a run's: move it aside to OUT.replaced-<time> first
            (without it such a folder is refused; mambaft.outdir).
        resume_anyway: resume even though the base, the data or the config differ from the run's
            (each difference is still said; mambaft.train.run_inputs).
        trust_legacy: resume from a checkpoint without manifest.json (written before mambaft wrote
            them); without it such checkpoints are set aside as unverified.
    Returns:
        {"final": path, "steps", "losses": [per step], "val_loss", "best_checkpoint", ...}; for
        "specialized" also {"phase1": {...}, "phase2": {...}} with "final" = phase 2's.
    """
    from accelerate import Accelerator

    if data_dir is None or out_dir is None:
        raise ConfigError("finetune needs data_dir (a `mambaft prepare` folder) and out_dir")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads <= 0):
        raise ConfigError(f"threads={threads!r}: must be a positive integer")
    log_with = None
    if tensorboard:
        try:
            import tensorboard as _tb  # noqa: F401
            log_with = "tensorboard"
        except ImportError:
            print("note: tensorboard is not installed; metrics.jsonl only (pip install tensorboard)")
    # cpu=True also when no GPU exists: only then does accelerate read WORLD_SIZE/RANK as a gloo group
    cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    check_launch_env(cfg, torch.device("cpu" if cpu else "cuda"))
    # mixed_precision="no": the loop alone autocasts, at cfg.precision (checked against the env above)
    accelerator = Accelerator(cpu=cpu, log_with=log_with, mixed_precision="no",
                              project_dir=str(out_dir) if log_with else None)
    previous_threads = torch.get_num_threads()
    if accelerator.device.type == "cpu":
        # N processes on one box share its cores: 2 cores / 2 processes = 1 thread each
        local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        runtime.set_threads(threads or max(1, _cores() // max(1, local)))
    elif threads:
        runtime.set_threads(threads)
    if log_with:
        accelerator.init_trackers("mambaft", config={k: v for k, v in cfg.to_dict().items()
                                                     if isinstance(v, (int, float, str, bool))})
    base_path = resolve_base(base or cfg.base)   # "": the demo base
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not data_dir.is_dir():   # checked before the run folder is claimed or made
        raise FileNotFoundError(f"{data_dir}: no such data folder (write one with `mambaft prepare`)")
    if accelerator.is_main_process:
        # the run folder is ours or refused, before anything is written (the base may live in it:
        # an own run folder keeps its files, a foreign one moved aside by --force may not hold it)
        outdir.claim(out_dir, "finetune", force=force, own_names=outdir.RUN_NAMES, may_hold_inputs=True,
                     inputs={"the base model": base_path, "the prepared data": data_dir},
                     say=lambda m: print(m, flush=True))
        outdir.mark(out_dir, "finetune")
    accelerator.wait_for_everyone()
    opts = dict(probe_tokens=probe_tokens, heldout_tokens=heldout_tokens, eval_at_start=eval_at_start,
                max_bad_steps=max_bad_steps, cli_overrides=cli_overrides,
                allow_world_size_change=allow_world_size_change, resume_anyway=resume_anyway,
                trust_legacy=trust_legacy)
    kw = dict(resume=resume, progress=progress, heldout_texts=heldout_texts, probes=probes, opts=opts)
    try:
        return _strategy(cfg, base_path, data_dir, out_dir, accelerator, kw)
    except Exception as e:
        # a full disk from any writer (json, metrics, final/ copy): one line with the path and the room
        from mambaft.errors import DiskFullError
        if isinstance(e, DiskFullError) or not durable.is_full_error(e, out_dir):
            raise
        where = getattr(e, "filename", None) or out_dir
        raise durable.disk_full_error(e, where, "the run", after="the checkpoints written so far are intact "
                                      "and the rerun removes the half-written files") from e
    finally:
        if log_with:
            accelerator.end_training()
        torch.set_num_threads(previous_threads)


def _strategy(cfg: Config, base_path: Path, data_dir: Path, out_dir: Path, accelerator, kw: dict) -> dict:
    """One phase, or the specialized strategy's two."""
    if cfg.strategy != "specialized":
        return _phase(cfg, base_path, data_dir, out_dir, accelerator, **kw)
    for sub in ("phase1", "phase2"):
        if not (data_dir / sub).is_dir():
            raise FileNotFoundError(f"{data_dir / sub}: strategy specialized needs DATA/phase1 and "
                                    "DATA/phase2 (written by `mambaft prepare --strategy specialized`)")
    r1 = _phase(cfg, base_path, data_dir / "phase1", out_dir / "phase1", accelerator, **kw)
    cfg2 = dataclasses.replace(cfg, max_steps=cfg.phase2_steps,
                               warmup_steps=min(cfg.warmup_steps, max(1, cfg.phase2_steps // 10)))
    if accelerator.is_main_process:
        print(f"phase 2 ({cfg.domain}): {cfg2.max_steps:,} steps from {r1['final']}", flush=True)
    r2 = _phase(cfg2, Path(r1["final"]), data_dir / "phase2", out_dir / "phase2", accelerator, **kw)
    return {**r2, "phase1": r1, "phase2": r2}
