"""`mambaft context`: does a model use context beyond its 19-token reach? (mambaft.evaluate.context)

    mambaft context --help
    mambaft context measure --model A --model B --text sotu --out outputs/context
    mambaft context demo --out outputs/context_demo   # train, upgrade, measure (CPU): mambaft.recipes.context_repair
    mambaft context demo --base data/demo_base --text wiki_en --freeze-original --continue-steps 1000
        # the run shipped in data/demo_base/context_repair (30 min, 2 cores)
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mambaft.evaluate.context import load_texts, measure_context


def _load_model(path: str):
    from mambaft.checkpoint import load_checkpoint
    return load_checkpoint(path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="mambaft context", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="loss by position + recall probe for saved models")
    m.add_argument("--model", action="append", required=True, help="checkpoint (.pt or folder); repeat")
    m.add_argument("--name", action="append", help="label per --model (default: folder name)")
    m.add_argument("--reference", help="name of the model the others are compared with (default: the first)")
    d = sub.add_parser("demo", help="pretrain a small model, continue as original and as selective, measure")
    d.add_argument("--steps", type=int, default=250, help="pretraining steps of the small original model")
    d.add_argument("--continue-steps", type=int, default=500, help="continued-training steps of each copy")
    d.add_argument("--d-model", type=int, default=64)
    d.add_argument("--layers", type=int, default=6)
    d.add_argument("--batch", type=int, default=4, help="plain-text rows per step")
    d.add_argument("--recall-rows", type=int, default=16, help="synthetic recall rows per continued step")
    d.add_argument("--copy-rows", type=int, default=0, help="copy rows (text segment, other text, the segment "
                   "again) per continued step")
    d.add_argument("--lr", type=float, default=3e-3)
    d.add_argument("--continue-lr", type=float, default=1e-3)
    d.add_argument("--new-lr-mult", type=float, default=10.0, help="lr factor for the new selective parameters")
    d.add_argument("--base", help="skip pretraining: continue from this saved original model folder")
    d.add_argument("--freeze-original", action="store_true", help="train only the new selective parameters; "
                   "the base is then the control")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    for q in (m, d):
        q.add_argument("--text", action="append", help="plain-text source name, file or folder "
                       "(mambaft.data.text; default sotu); the held-out split is measured")
        q.add_argument("--length", type=int, default=256, help="window length in tokens")
        q.add_argument("--windows", type=int, default=128, help="held-out windows for loss by position")
        q.add_argument("--fillers", type=int, default=10, help="recall probe: held-out fillers, each asked "
                       "with all 10 names (items = 10 x fillers)")
        q.add_argument("--out", default="outputs/context", help="folder for context.json and context.png")
        q.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    from mambaft.runtime import set_threads
    set_threads(a.threads)
    texts = a.text or ["sotu"]
    if a.cmd == "demo":
        from mambaft.recipes.context_repair import run_demo
        rep = run_demo(Path(a.out), texts, steps=a.steps, continue_steps=a.continue_steps, d_model=a.d_model,
                       n_layers=a.layers, length=a.length, batch=a.batch, recall_rows=a.recall_rows, lr=a.lr,
                       copy_rows=a.copy_rows,
                       continue_lr=a.continue_lr, new_lr_mult=a.new_lr_mult, seed=a.seed, windows=a.windows,
                       precision=a.precision, base_from=Path(a.base) if a.base else None, n_fillers=a.fillers,
                       freeze_original=a.freeze_original)
    else:
        loaded = [_load_model(path) for path in a.model]
        names = a.name or [Path(path).stem if Path(path).is_file() else Path(path).name for path in a.model]
        if len(names) != len(loaded):
            p.error("give one --name per --model")
        tok = loaded[0][1].tokenizer
        length = min([a.length] + [mdl.config.max_seq_len for mdl, _ in loaded])
        rep = measure_context({n: mdl for n, (mdl, _) in zip(names, loaded)}, tok, load_texts(texts, "heldout"),
                              length=length, windows=a.windows, reference=a.reference, n_fillers=a.fillers)
        rep.save(Path(a.out))
    print(rep.table())
    print(f"wrote {Path(a.out) / 'context.json'} and context.png")
