"""`mambaft export MODEL --to DIR --format hf`: a folder that transformers loads without mambaft.

    DIR/config.json                  model_type "mambaswelu", auto_map, every architecture field, and
                                     under "mambaft" what load_checkpoint needs to come back exactly
    DIR/generation_config.json       the end token only: generate(do_sample=False) is plain greedy
                                     (the chat's sampling defaults are in the card)
    DIR/configuration_mambaswelu.py  the transformers config and the adapter (mambaft/hf/files/)
    DIR/modeling_mambaswelu.py
    DIR/mambaswelu.py, ssm.py,       mambaft's model code itself, imports flattened (mambaft.hf.ship)
        kernels_*.py
    DIR/model.safetensors            fp32 weights, "model." + mambaft's names; the tied embedding once
    DIR/tokenizer.json, tokenizer_config.json (with the Jinja chat_template), special_tokens_map.json
    DIR/README.md                    the model card (mambaft.hf.card)

Writing needs no transformers; `load_checkpoint(DIR)` reads the folder back bit for bit.

    mambaft export outputs/quick/03_finetune_multi_gpu/run/final --to /tmp/hf_model
"""
from __future__ import annotations

import json
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Optional, Union

import torch

from mambaft.hf.card import model_card
from mambaft.hf.chat_template import hf_tokenizer, jinja_template, mambaft_tokenizer
from mambaft.hf.ship import write_model_code
from mambaft.model import MambaSWELUConfig
from mambaft.template import ChatTemplate
from mambaft.tokenizer import TextTokenizer

MODEL_TYPE = "mambaswelu"
FILES = Path(__file__).parent / "files"
CODE_FILES = ("configuration_mambaswelu.py", "modeling_mambaswelu.py")
AUTO_MAP = {"AutoConfig": "configuration_mambaswelu.MambaSWELUConfig",
            "AutoModelForCausalLM": "modeling_mambaswelu.MambaSWELUForCausalLM"}
WEIGHTS_FILE = "model.safetensors"
FORMATS = ("hf",)
PREFIX = "model."     # MambaSWELUForCausalLM.model is mambaft's MambaSWELU (transformers' usual layout)


def is_hf_config(meta: dict) -> bool:
    return meta.get("model_type") == MODEL_TYPE


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def generation_config(end_id: int) -> dict:
    """Stop at the end token, nothing else: a sampling default here would also apply to a caller's
    `generate(do_sample=False)` (a repetition penalty) and override an evaluation harness's own length
    (max_new_tokens beats lm-eval's max_gen_toks). The chat's defaults are printed in the card."""
    return {"eos_token_id": end_id, "pad_token_id": end_id}


def write_hf_folder(model: torch.nn.Module, out: Union[str, Path], *, template: ChatTemplate,
                    tokenizer: TextTokenizer, step: Optional[int] = None, epoch: int = 0,
                    training: Optional[dict] = None, card: Optional[dict] = None) -> Path:
    """Write the files into the (empty) folder `out`. `card`: extra facts for the model card
    (result, sources, evaluation, base_model, license: see mambaft.hf.card.model_card)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg: MambaSWELUConfig = model.config
    end_id = template.end_id(tokenizer)
    sd = {PREFIX + k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
          for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        sd.pop(PREFIX + "lm_head.weight", None)      # tied: stored once; transformers re-ties it on load
    save_file(sd, str(out / WEIGHTS_FILE), metadata={"format": "pt"})   # "pt": what transformers expects
    (out / WEIGHTS_FILE).chmod(0o644)   # a temp folder's files are private; a model is a normal file
    _write_json(out / "config.json", {
        "model_type": MODEL_TYPE, "architectures": ["MambaSWELUForCausalLM"], "auto_map": AUTO_MAP,
        **cfg.to_dict(), "tie_word_embeddings": cfg.tie_embeddings,
        "eos_token_id": end_id, "pad_token_id": end_id, "use_cache": True,
        "dtype": "float32", "torch_dtype": "float32",     # transformers 5 / 4 names
        "mambaft": {"format_version": 1, "chat_template": template.to_dict(), "step": step,
                    "epoch": epoch, "training": training or {}}})
    _write_json(out / "generation_config.json", generation_config(end_id))
    for name in CODE_FILES:
        shutil.copyfile(FILES / name, out / name)
    write_model_code(out)
    hf_tokenizer(tokenizer, template).save(str(out / "tokenizer.json"))
    special = {"eos_token": template.end_of_turn, "pad_token": template.end_of_turn}
    _write_json(out / "special_tokens_map.json", special)
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", **special, "add_prefix_space": False,
        "clean_up_tokenization_spaces": False, "split_special_tokens": False,
        "model_max_length": cfg.max_seq_len if cfg.architecture == "original" else 1_000_000,
        "chat_template": jinja_template(template)})
    (out / "README.md").write_text(model_card(cfg, template, training=training, step=step,
                                              end_id=end_id, **(card or {})), encoding="utf-8")
    return out


def read_hf_folder(path: Path, meta: dict) -> dict:
    """An exported folder -> {"state_dict", "config", "template", "tokenizer", "step", "epoch",
    "training"} (what load_checkpoint needs). Weights named by mambaft, in fp32."""
    from safetensors.torch import load_file

    known = {f.name for f in fields(MambaSWELUConfig)}
    cfg = MambaSWELUConfig(**{k: v for k, v in meta.items() if k in known})
    extra = meta.get("mambaft") or {}
    template = ChatTemplate.from_dict(extra["chat_template"]) if "chat_template" in extra else None
    tok_file = path / "tokenizer.json"
    sd = load_file(str(path / WEIGHTS_FILE))
    if any(k.startswith(PREFIX) for k in sd):      # (folders of earlier exports had no prefix)
        sd = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in sd.items()}
    return {"state_dict": sd, "config": cfg, "template": template,
            "tokenizer": mambaft_tokenizer(tok_file) if tok_file.is_file() else None,
            "step": extra.get("step"), "epoch": extra.get("epoch"), "training": extra.get("training") or {}}


def run_facts(model_dir: Union[str, Path]) -> dict:
    """What a fine-tuning run folder says about its final model: result.json beside it (when
    `model_dir` is the run's `final/`), for the model card."""
    model_dir = Path(model_dir)
    res = model_dir.parent / "result.json"
    if model_dir.is_dir() and res.is_file():
        result = json.loads(res.read_text(encoding="utf-8"))
        if Path(result.get("final", "")).resolve() == model_dir.resolve():
            return {"result": result}
    return {}
