"""Reading and writing MambaSWELU checkpoints: the original `.pt` dict and mambaft's model folder.

Original `.pt` (what Powwpol/SWELU_LLM's Trainer writes; `final_model.pt`, `model_step_N.pt`):
    {"model_state_dict": 80 fp32 tensors, "config": {vocab_size, d_model, n_layers, max_seq_len,
     tie_embeddings}, "optimizer_state": AdamW, "global_step": int (micro-batches), "epoch": int}
    d_state, d_conv, expand, dense_hidden_dim and dropout are NOT saved: we infer them from shapes.
    (mambaft's own original-format saves write them all, so the user's code can rebuild any size.)

mambaft model folder:
    config.json          {"format": "mambaft-model", "model": MambaSWELUConfig, "training": {...}}
    model.safetensors    weights; the tied embedding stored once (no lm_head.weight)
    tokenizer.json       the tokenizer the model was trained with
    chat_template.json   the chat template it was trained with (chat and evaluation load it back)

transformers folder (`format="hf"`, mambaft.hf.export): loads in transformers without mambaft, and
here too (config.json with model_type "mambaswelu").

    mambaft info PATH                # describe a checkpoint
    mambaft info PATH --to OUT [--format original|folder|hf]
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .errors import UserError
from .model import MambaSWELUConfig, build_model
from .model.kernels.swelu import LAM_FORMULAS
from .template import DEFAULT_TEMPLATE, TEMPLATE_FILE, ChatTemplate
from .tokenizer import GPT2_VOCAB_SIZE, TextTokenizer, load_tokenizer

FOLDER_FORMAT = "mambaft-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


class CheckpointError(UserError, ValueError):
    """A checkpoint cannot be used; the message says which file and why."""


@dataclass
class CheckpointInfo:
    path: Path
    format: str                       # "original" | "folder" | "hf"
    config: MambaSWELUConfig
    step: Optional[int] = None        # original: global_step (micro-batches); folder: optimizer steps
    epoch: Optional[int] = None
    saved_config: dict = field(default_factory=dict)
    inferred: dict = field(default_factory=dict)   # values read from tensor shapes, not the file
    template: ChatTemplate = DEFAULT_TEMPLATE
    template_source: str = "default"
    tokenizer: Optional[TextTokenizer] = None
    training: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    nonfinite: list = field(default_factory=list)  # names of tensors holding NaN/inf (should be empty)

    def describe(self) -> str:
        lines = [f"{self.path} ({self.format} format, architecture {self.config.architecture})",
                 f"  step {self.step}, epoch {self.epoch}",
                 f"  config: {json.dumps(self.config.to_dict())}"]
        if self.inferred:
            lines.append(f"  inferred from tensor shapes: {json.dumps(self.inferred)}")
        lines.append(f"  chat template: {self.template.name} ({self.template_source})")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# --- reading -------------------------------------------------------------------------------------
def _strip_prefixes(sd: dict) -> tuple[dict, list]:
    notes = []
    for prefix in PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
            notes.append(f"stripped the {prefix!r} prefix from every key")
    return sd, notes


def infer_config(sd: dict, saved: dict, path: Path, lam_formula: Optional[str]) -> tuple[MambaSWELUConfig, dict]:
    """Rebuild the full constructor arguments from tensor shapes (checked against the saved config)."""
    def need(key: str) -> torch.Tensor:
        if key not in sd:
            raise CheckpointError(f"{path}: no tensor {key!r}: this is not a MambaSWELU checkpoint "
                                  f"(first keys: {', '.join(list(sd)[:5])})")
        return sd[key]

    vocab, d_model = need("token_embedding.weight").shape
    max_seq_len = need("position_embedding.weight").shape[0]
    layer_ids = {int(k.split(".")[2]) for k in sd if k.startswith("mamba_stack.layers.")}
    n_layers = len(layer_ids)
    in_proj = need("mamba_stack.layers.0.mamba.in_proj.weight")
    inferred = {
        "d_conv": int(need("mamba_stack.layers.0.mamba.conv1d.weight").shape[-1]),
        "expand": int(in_proj.shape[0] // (2 * d_model)),
        "d_state": int(need("mamba_stack.layers.0.mamba.x_proj.weight").shape[0]),
        "dense_hidden_dim": int(need("dense1.weight").shape[0]),
    }
    has_lam = any(k.endswith(".lam") for k in sd)
    if has_lam and lam_formula is None:
        raise CheckpointError(
            f"{path}: has SWELU `lam` keys (a later SWELU version); the 124M base model has none. "
            f"Say which formula it used with lam_formula=: " +
            "; ".join(f"{k!r}: {v}" for k, v in LAM_FORMULAS.items()))
    found = {"vocab_size": int(vocab), "d_model": int(d_model), "n_layers": n_layers,
             "max_seq_len": int(max_seq_len)}
    for k, v in found.items():
        if k in saved and int(saved[k]) != v:
            raise CheckpointError(f"{path}: saved config says {k}={saved[k]} but the weights have {k}={v}")
    tie = bool(saved.get("tie_embeddings", True))
    if "lm_head.weight" in sd and tie and not torch.equal(sd["lm_head.weight"], sd["token_embedding.weight"]):
        raise CheckpointError(f"{path}: tie_embeddings is true but lm_head.weight differs from "
                              "token_embedding.weight")
    cfg = MambaSWELUConfig(**found, **inferred, tie_embeddings=tie,
                           swelu_lam_formula=lam_formula if has_lam else None)
    return cfg, inferred


def _fit_problems(own: dict, sd: dict, tied: bool) -> list[str]:
    """Why the file's tensors do not fit the model `own` describes ({name: tensor, meta or real}):
    missing/unexpected keys, shape mismatches, and non-floating weights where the model holds
    floats (an int, bool or complex tensor cast to float is silently a different model)."""
    sd = dict(sd)
    if tied:
        sd.setdefault("lm_head.weight", sd.get("token_embedding.weight"))
    missing = sorted(k for k in set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    common = sorted(set(sd) & set(own))
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in common if tuple(sd[k].shape) != tuple(own[k].shape)]
    dtypes = [f"{k} ({str(sd[k].dtype).replace('torch.', '')})" for k in common
              if own[k].is_floating_point() and not sd[k].is_floating_point()]
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    if shapes:
        parts.append("shape mismatches: " + "; ".join(shapes[:8]))
    if dtypes:
        parts.append(f"non-floating weights ({len(dtypes)}): " + ", ".join(dtypes[:8]))
    return parts


def _check_fit(cfg: MambaSWELUConfig, sd: dict, path: Path) -> None:
    """The file's tensors against the model its config describes, built on the meta device (no
    memory): a config.json claiming d_model 10**6 is refused here, before 20-512 GB are allocated."""
    try:
        with torch.device("meta"):
            own = build_model(cfg).state_dict()
    except (ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: its config does not describe a buildable model ({e})") from e
    parts = _fit_problems(own, sd, cfg.tie_embeddings)
    if parts:
        raise CheckpointError(f"{path}: weights do not fit a {cfg.architecture} MambaSWELU "
                              f"({cfg.n_layers} layers, d_model {cfg.d_model}): " + " | ".join(parts))


def _load_into(model: torch.nn.Module, sd: dict, path: Path) -> None:
    """Strict load with a readable account of every missing/unexpected key and shape mismatch."""
    own = model.state_dict()
    tied = model.config.tie_embeddings
    parts = _fit_problems(own, sd, tied)
    if parts:
        raise CheckpointError(f"{path}: weights do not fit a {model.config.architecture} MambaSWELU "
                              f"({model.config.n_layers} layers, d_model {model.config.d_model}): " +
                              " | ".join(parts))
    sd = dict(sd)
    if tied:
        sd.setdefault("lm_head.weight", sd.get("token_embedding.weight"))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True)


def _read_original(path: Path, lam_formula: Optional[str]) -> tuple[dict, CheckpointInfo]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint (truncated, corrupt, or "
                              f"not a weights-only file): {first}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict with 'model_state_dict', got {type(obj).__name__}")
    notes = []
    if "model_state_dict" in obj:
        sd = obj["model_state_dict"]
    elif all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd, obj = obj, {}
        notes.append("file is a bare state dict (no config, step or optimizer state)")
    else:
        raise CheckpointError(f"{path}: no 'model_state_dict' (keys: {', '.join(map(str, list(obj)[:8]))})")
    sd, prefix_notes = _strip_prefixes(dict(sd))
    saved = dict(obj.get("config") or {})
    cfg, inferred = infer_config(sd, saved, path, lam_formula)
    info = CheckpointInfo(path=path, format="original", config=cfg, step=obj.get("global_step"),
                          epoch=obj.get("epoch"), saved_config=saved, inferred=inferred,
                          template_source="default (the base checkpoint carries no template)",
                          notes=notes + prefix_notes)
    return sd, info


def _checked_model_config(d, cfg_file: Path) -> dict:
    """The "model" block of a folder's config.json, each value of the right type and range; a bad
    one would otherwise surface as a RuntimeError/TypeError deep inside the model's constructor."""
    if not isinstance(d, dict):
        raise CheckpointError(f"{cfg_file}: \"model\" is {type(d).__name__}, expected an object of sizes")
    fields = MambaSWELUConfig.__dataclass_fields__
    for k, v in d.items():
        if k not in fields:
            continue   # from_dict names unknown fields
        kind = fields[k].type
        if kind in ("int", int):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise CheckpointError(f"{cfg_file}: model.{k}={v!r}: expected a positive integer")
        elif kind in ("float", float):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise CheckpointError(f"{cfg_file}: model.{k}={v!r}: expected a number in [0, 1)")
        elif kind in ("bool", bool):
            if not isinstance(v, bool):
                raise CheckpointError(f"{cfg_file}: model.{k}={v!r}: expected true or false")
        elif k == "architecture" and v not in ("original", "selective"):
            raise CheckpointError(f"{cfg_file}: model.architecture={v!r}: expected 'original' or 'selective'")
        elif k == "swelu_lam_formula" and v is not None and v not in LAM_FORMULAS:
            raise CheckpointError(f"{cfg_file}: model.swelu_lam_formula={v!r}: expected one of {sorted(LAM_FORMULAS)}")
    return d


def nonfinite_tensors(model: torch.nn.Module) -> list[str]:
    """Names of parameters/buffers holding NaN or inf (a run that diverged and was saved anyway)."""
    return [n for n, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]


def _read_folder(path: Path) -> tuple[dict, CheckpointInfo]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg_file, weights = path / CONFIG_FILE, path / WEIGHTS_FILE
    for f in (cfg_file, weights, path / TEMPLATE_FILE, path / "tokenizer.json"):
        _refuse_special(f)
    if not weights.is_file():
        pts = sorted(path.glob("*.pt"))
        hint = f" (it holds {pts[0].name}: pass that file)" if pts else ""
        raise CheckpointError(f"{path}: no {WEIGHTS_FILE} in this folder{hint}")
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: has {WEIGHTS_FILE} but no {CONFIG_FILE}")
    try:
        meta = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{cfg_file}: expected a JSON object, got {type(meta).__name__}")
    from mambaft.hf.export import is_hf_config
    if is_hf_config(meta):
        return _read_hf(path, meta)
    if meta.get("format") != FOLDER_FORMAT:
        raise CheckpointError(f"{cfg_file}: format {meta.get('format')!r} is not {FOLDER_FORMAT!r}")
    try:
        cfg = MambaSWELUConfig.from_dict(_checked_model_config(meta.get("model"), cfg_file))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_file}: bad model config ({e})") from e
    try:
        sd = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: cannot be read (truncated or corrupt?): {e}") from e
    template, source = DEFAULT_TEMPLATE, "default (no chat_template.json in the folder)"
    try:
        if (path / TEMPLATE_FILE).is_file():
            template, source = ChatTemplate.load(path), str(path / TEMPLATE_FILE)
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path / TEMPLATE_FILE}: not a usable chat template ({_first_line(e)})") from e
    try:
        tok = load_tokenizer(path) if (path / "tokenizer.json").is_file() else None
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{path / 'tokenizer.json'}: not a usable tokenizer ({_first_line(e)})") from e
    # The stock GPT-2 tokenizer beside a smaller test-sized vocabulary (what save_checkpoint writes by
    # default for the tiny fixtures) is let through; any other tokenizer must fit the embedding.
    if tok is not None and tok.vocab_size > cfg.vocab_size and tok.vocab_size != GPT2_VOCAB_SIZE:
        raise CheckpointError(f"{path / 'tokenizer.json'}: holds {tok.vocab_size:,} token ids but the model's "
                              f"vocabulary has {cfg.vocab_size:,}: ids past {cfg.vocab_size - 1} have no "
                              "embedding (the tokenizer of another model?)")
    info = CheckpointInfo(path=path, format="folder", config=cfg, step=meta.get("step"),
                          epoch=meta.get("epoch"), saved_config=meta["model"], template=template,
                          template_source=source, tokenizer=tok, training=meta.get("training", {}))
    return sd, info


def _read_hf(path: Path, meta: dict) -> tuple[dict, CheckpointInfo]:
    from safetensors import SafetensorError
    from mambaft.hf.export import read_hf_folder
    try:
        got = read_hf_folder(path, meta)
    except (SafetensorError, OSError, ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: an exported transformers folder that cannot be read: {e}") from e
    template, source = got["template"], str(path / CONFIG_FILE)
    if template is None:
        template, source = DEFAULT_TEMPLATE, "default (config.json has no mambaft chat template)"
    info = CheckpointInfo(path=path, format="hf", config=got["config"], step=got["step"],
                          epoch=got["epoch"], saved_config=got["config"].to_dict(), template=template,
                          template_source=source, tokenizer=got["tokenizer"], training=got["training"])
    return got["state_dict"], info


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _refuse_special(path: Path) -> None:
    """Only regular files are read: a FIFO would block the reader forever, a device never ends."""
    if path.exists() and not path.is_file() and not path.is_dir():
        raise CheckpointError(f"{path}: not a regular file (a named pipe, socket or device): refusing to read it")


def _verify_model_manifest(path: Path) -> None:
    """A model folder's manifest.json (its own, or its checkpoint's entries for model/), verified."""
    from mambaft import durable
    if (path / durable.MANIFEST).is_file():
        problems = durable.verify_manifest(path)
    elif (path.parent / durable.MANIFEST).is_file():
        problems = durable.verify_manifest(path.parent, only=path.name + "/")
    else:
        return
    if problems:
        raise CheckpointError(f"{path}: does not match its manifest: {'; '.join(problems[:3])}"
                              f"{' ...' if len(problems) > 3 else ''} (damaged or edited after it was written)")


def load_checkpoint(path: Union[str, Path], device: Union[str, torch.device] = "cpu",
                    lam_formula: Optional[str] = None, *,
                    allow_nonfinite: bool = False) -> tuple[torch.nn.Module, CheckpointInfo]:
    """Load an original `.pt`, a mambaft model folder or an exported transformers folder.
    Returns (model in eval mode, info). Checked before use: only regular files, the folder's
    manifest, config sizes against the tensors' shapes (before any allocation), floating weights,
    the tokenizer's ids against the vocabulary; NaN/inf weights are refused unless
    `allow_nonfinite` (then named in info.nonfinite and info.notes, for `info` and the trainer's
    fallback)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file or model folder")
    _refuse_special(path)
    if lam_formula is not None and lam_formula not in LAM_FORMULAS:
        raise CheckpointError(f"lam_formula={lam_formula!r}: expected one of {sorted(LAM_FORMULAS)}")
    sd, info = _read_folder(path) if path.is_dir() else _read_original(path, lam_formula)
    _check_fit(info.config, sd, path)
    if info.format == "folder":
        # after the specific checks (their messages say more), before anything is allocated: what
        # they cannot see, a flipped byte in a weight, only the checksum can
        _verify_model_manifest(path)
    model = build_model(info.config)
    _load_into(model, sd, path)
    info.nonfinite = nonfinite_tensors(model)
    if info.nonfinite:
        msg = (f"{path}: {len(info.nonfinite)} of {len(model.state_dict())} tensors hold NaN/inf "
               f"(e.g. {', '.join(info.nonfinite[:3])}): this model's outputs are garbage")
        if not allow_nonfinite:
            raise CheckpointError(msg)
        info.notes.append(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    if info.tokenizer is None:
        info.tokenizer = load_tokenizer()
    return model.to(device).eval(), info


# --- writing -------------------------------------------------------------------------------------
def _atomic_replace(tmp: Path, final: Path) -> None:
    """Move a finished temp file/folder into place; a crash leaves either the old or the new one."""
    if final.is_dir() and tmp.is_dir():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def save_checkpoint(model: torch.nn.Module, path: Union[str, Path], format: str = "folder", *,
                    template: Optional[ChatTemplate] = None, tokenizer: Optional[TextTokenizer] = None,
                    step: Optional[int] = None, epoch: int = 0, training: Optional[dict] = None,
                    optimizer_state: Optional[dict] = None, dtype: torch.dtype = torch.float32,
                    card: Optional[dict] = None) -> Path:
    """Write `model` as a mambaft folder (default), in the original `.pt` format, or as a folder
    transformers loads (`format="hf"`, always fp32; `card`: extra facts for its model card, see
    mambaft.hf.export.write_hf_folder).

    The original format is what the user's own chat script loads with a strict `load_state_dict`
    into the original class: the 80 original keys, fp32, `config` with every argument of the original
    constructor (`MambaSWELUConfig.original_config`) and an int `global_step`. Both writes are atomic (temp file/folder, then rename)."""
    path = Path(path)
    cfg: MambaSWELUConfig = model.config
    if format == "original":
        if cfg.architecture != "original":
            raise CheckpointError(
                f"cannot export a {cfg.architecture!r} model to the original .pt format: the original "
                "code has no selective-scan path and would load it with missing/unexpected keys. "
                "Save it as a mambaft folder instead.")
        sd = {k: v.detach().to("cpu", torch.float32).clone() for k, v in model.state_dict().items()}
        if cfg.tie_embeddings:
            sd["lm_head.weight"] = sd["token_embedding.weight"]  # one storage, as the original saves it
        obj: dict[str, Any] = {"model_state_dict": sd, "config": cfg.original_config(),
                               "global_step": int(step or 0), "epoch": int(epoch)}
        if optimizer_state is not None:
            obj["optimizer_state"] = optimizer_state
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        os.close(fd)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a checkpoint is a normal file
        torch.save(obj, tmp)
        _atomic_replace(Path(tmp), path)
        return path
    if format not in ("folder", "hf"):
        raise ValueError(f"format={format!r}: expected 'folder', 'original' or 'hf'")
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp"))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private
    try:
        if format == "hf":
            from mambaft.hf.export import write_hf_folder
            write_hf_folder(model, tmp, template=template or DEFAULT_TEMPLATE,
                            tokenizer=tokenizer or load_tokenizer(), step=step, epoch=epoch,
                            training=training, card=card)
            _atomic_replace(tmp, path)
            return path
        sd = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
              for k, v in model.state_dict().items()}
        if cfg.tie_embeddings:
            sd.pop("lm_head.weight", None)  # tied: stored once, restored on load
        save_file(sd, str(tmp / WEIGHTS_FILE), metadata={"format": FOLDER_FORMAT})
        os.chmod(tmp / WEIGHTS_FILE, 0o644)
        meta = {"format": FOLDER_FORMAT, "format_version": FORMAT_VERSION, "model": cfg.to_dict(),
                "step": step, "epoch": epoch, "dtype": str(dtype).replace("torch.", ""),
                "training": training or {}}
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (template or DEFAULT_TEMPLATE).save(tmp)
        (tokenizer or load_tokenizer()).save(tmp)
        from mambaft import durable
        durable.write_manifest(tmp)   # sizes and sha256: load_checkpoint verifies them (issue 28)
        _atomic_replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
