"""Output folders are owned, never assumed (issue 28).

A command writes into a folder only if the folder is absent, empty, or already that command's own: it
carries the command's marker (`.mambaft-owner.json`, written by `mark`), or, for folders written before
markers existed, holds nothing but names the command writes itself. Anything else is refused with one
line; `force=True` (the CLI's `--force`) moves the old folder aside to `NAME.replaced-<UTC time>` first,
never deletes it. An output may never be an input's folder: not the base model's folder or inside it,
nor a folder holding a source file (a command that swaps in its finished folder whole would delete it).

    claim(out, "prepare", inputs={"source alpaca": "a/alpaca.json"}, own_names=PREPARE_NAMES)
    ... write ...
    mark(out_or_its_temp_folder, "prepare")

    python -m pytest -q tests/test_output_folders.py
"""
from __future__ import annotations

import fnmatch
import json
import os
import time
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

from mambaft.errors import UserError

MARKER = ".mambaft-owner.json"
PathLike = Union[str, Path]

# What each command writes into its output folder (globs); a folder of only these names is the
# command's own even without a marker (written before markers existed, or killed before the marker).
PREPARE_NAMES = ("train", "val", "phase1", "phase2", "dataset_dict.json", "stats.json", "preview.txt",
                 "prepare_complete.json", "chat_template.json")
MODEL_NAMES = ("config.json", "model.safetensors", "tokenizer.json", "chat_template.json", "manifest.json",
               "generation_config.json", "special_tokens_map.json", "tokenizer_config.json", "README.md",
               "*.py")
RUN_NAMES = ("checkpoints", "final", "probes", "metrics.jsonl", "result.json", "final_model.pt", "config.json",
             "run.lock", "run_inputs.json", "replaced-*", "phase1", "phase2", "mambaft", "lr_sweep*")


class OutputFolderError(UserError, FileExistsError):
    """The output folder is someone else's, or holds this command's own input."""


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def owner(folder: PathLike) -> Optional[str]:
    """The command named by the folder's marker, None without a (readable) one."""
    try:
        d = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return d.get("command") if isinstance(d, dict) and isinstance(d.get("command"), str) else None


def is_own(folder: PathLike, command: str, own_names: Iterable[str] = ()) -> bool:
    """Absent, empty, marked by `command`, or holding only names `command` writes."""
    folder = Path(folder)
    if not folder.exists():
        return True
    if not folder.is_dir() or folder.is_symlink():
        return False
    entries = [e for e in os.listdir(folder) if e != MARKER]
    if not entries:
        return True
    if owner(folder) == command:
        return True
    names = tuple(own_names)
    return bool(names) and owner(folder) is None and all(any(fnmatch.fnmatch(e, g) for g in names)
                                                         for e in entries)


def aside_path(out: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    dest, n = out.with_name(f"{out.name}.replaced-{stamp}"), 1
    while dest.exists():
        n += 1
        dest = out.with_name(f"{out.name}.replaced-{stamp}.{n}")
    return dest


def check_inputs(out: PathLike, inputs: Mapping[str, PathLike], *, may_hold_inputs: bool = False) -> None:
    """Refuse an output that is an input, lies inside an input folder, or (unless `may_hold_inputs`)
    holds an input. `inputs`: {what it is ("the base model", "source alpaca"): path}."""
    o = Path(out).resolve()
    for what, p in inputs.items():
        if p is None or str(p) == "":
            continue
        p = Path(p).resolve()
        if not p.exists():
            continue
        if _inside(o, p):
            raise OutputFolderError(f"{out}: is {what} ({p}) or inside it; writing there would damage it. "
                                    "Choose another output folder")
        if not may_hold_inputs and _inside(p, o):
            raise OutputFolderError(f"{out}: holds {what} ({p}), which this command reads and would "
                                    "replace along with the folder. Choose another output folder")


def claim(out: PathLike, command: str, *, force: bool = False, own_names: Iterable[str] = (),
          inputs: Optional[Mapping[str, PathLike]] = None, may_hold_inputs: bool = False,
          say=print) -> Optional[Path]:
    """Make sure `mambaft COMMAND` may write `out` (see the module doc). Returns where `force` moved
    the old folder, or None when nothing was moved. Raises OutputFolderError otherwise."""
    out = Path(out)
    inputs = dict(inputs or {})
    own = is_own(out, command, own_names)
    # an input inside a folder we would move aside (force) goes with it: refused as well
    check_inputs(out, inputs, may_hold_inputs=may_hold_inputs and own)
    if own:
        return None
    kind = "a file" if out.exists() and not out.is_dir() else "a folder"
    if not force:
        held = sorted(os.listdir(out)) if out.is_dir() else []
        shown = ", ".join(held[:4]) + (f" ... ({len(held)} entries)" if len(held) > 4 else "")
        by = owner(out) if out.is_dir() else None
        whose = f"written by `mambaft {by}`" if by else "not written by this command"
        raise OutputFolderError(f"{out}: {kind} {whose}" + (f" (holds {shown})" if shown else "") +
                                f"; `mambaft {command}` writes only into an absent, empty or own folder. "
                                "Choose another one, or pass --force to move it aside (nothing is deleted)")
    dest = aside_path(out)
    os.replace(out, dest)
    say(f"--force: moved the existing {out} aside to {dest}")
    return dest


def mark(folder: PathLike, command: str) -> Path:
    """Write `command`'s marker into `folder` (created if needed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MARKER
    path.write_text(json.dumps({"command": command, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                            time.gmtime())}) + "\n",
                    encoding="utf-8")
    return path


# --- the commands that write a model (`info --to`, `export --to`) --------------------------------------
def claim_model_output(to: str, command: str, model: str, *, force: bool) -> None:
    """`to` is absent, empty, or an earlier model folder of `command`; never the model it reads,
    never inside that model's folder, never holding it. A file there is only replaced with --force."""
    target = Path(to)
    claim(target, command, force=force, own_names=MODEL_NAMES,
                 inputs={"the model being read": model})


def write_model(to: str, model, fmt: str, **kw) -> Path:
    """save_checkpoint into `to`; a full disk is one line naming the path and the room, and leaves
    no half-written temp file or folder behind (they would keep the disk full)."""
    from mambaft import durable
    from mambaft.checkpoint import save_checkpoint   # torch is imported only when a model is written
    target = Path(to)
    _remove_leftovers(target)
    try:
        return save_checkpoint(model, target, fmt, **kw)
    except Exception as e:
        if not durable.is_full_error(e, target.parent):
            raise
        _remove_leftovers(target)
        raise durable.disk_full_error(e, target, f"the {fmt} model",
                                      after="the half-written copy was removed") from e


def _remove_leftovers(target: Path) -> None:
    """save_checkpoint's temp files/folders beside `target` (NAME.*.tmp) from an earlier failed run."""
    import shutil
    if not target.parent.is_dir():
        return
    for p in target.parent.glob(f"{target.name}.*.tmp"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
