"""The models of a course run: the fine-tuning result, its checkpoints, the one notebook 04 calls
"fine-tuned", what it compares, the context measurements, and the export for transformers."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from mambaft.course import CONTEXT_REPAIR, PathLike, data_dir, notebook_dir, phase_dirs


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


def chat_models(strategy: str, base: PathLike, run_dir: PathLike, *, seed: Optional[int] = None) -> dict:
    """{"base": folder, "fine-tuned": folder}: the two models notebook 04's chat compares, from the
    notebook's parameters and the run folder alone. The configuration is the notebook's, and the choice
    of "fine-tuned" is read from the run's checkpoints and metrics.jsonl (`chosen_checkpoint`): no
    evaluation, so a reopened notebook brings its chat back with one cell."""
    from mambaft.course import course_overrides, finetune_dir, make_config
    cfg = make_config(strategy, **course_overrides(strategy, base, seed=seed).overrides)
    run = finetune_dir(run_dir)
    models = dict(evaluation_models(cfg, run, chosen_checkpoint(cfg, run)))
    return {"base": models["base"], "fine-tuned": models["fine-tuned"]}


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
    """The shipped report of the context repair on the demo base (`mambaft context
    demo --base data/demo_base --freeze-original ...`, README "Repairing the context")."""
    from mambaft.evaluate.context import ContextReport
    return ContextReport.load(Path(folder))


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
