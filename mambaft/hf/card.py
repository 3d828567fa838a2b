"""The model card (README.md) of an exported folder: the Hub's YAML header, then what the run did.

Filled from what the model folder and its run record: the training metadata saved in every model
folder (strategy, sources, step, validation loss), and when known the run's result.json (final
training loss), the prepared data's stats.json (the sources actually used, with their licences) and
the evaluation table of notebook 04.
"""
from __future__ import annotations

from typing import Optional

from mambaft.chat.settings import ChatSettings
from mambaft.data.sources import SOURCES
from mambaft.model import MambaSWELUConfig
from mambaft.template import ChatTemplate

ORIGINAL_BASE = "Powwpol/SWELU_LLM"   # the user's MambaSWELU 124M (mambaswelu.md)


def sources_from_stats(stats: dict) -> list[dict]:
    """Sources of a prepared dataset's stats.json (both phases for "specialized")."""
    phases = stats["phases"] if "phases" in stats else {"main": stats}
    out = []
    for phase, st in phases.items():
        for name, s in st.get("sources", {}).items():
            out.append({"name": name, "license": s.get("license", "?"), "origin": s.get("origin", "?"),
                        "weight": s.get("weight"), "rows": s.get("train_rows"),
                        "phase": phase if len(phases) > 1 else None})
    return out


def sources_from_training(training: dict) -> list[dict]:
    """Sources named by the training metadata of a model folder (fine-tune config or pretraining)."""
    if isinstance(training.get("sources"), list):               # mambaft pretrain's summary
        return [{"name": s["name"], "license": s.get("license", s.get("licence", "?")), "origin": "registry",
                 "weight": s.get("weight"), "rows": s.get("documents")} for s in training["sources"]]
    cfg = training.get("config") or {}
    mode = cfg.get("data_mode", "auto")
    chosen = {} if mode == "offline" else dict(cfg.get("sources") or {})
    if mode != "hub":
        chosen.update(cfg.get("offline_sources") or {})
    out = []
    for name, weight in chosen.items():
        spec = SOURCES.get(name)
        out.append({"name": name, "license": spec.license if spec else "?",
                    "origin": spec.origin if spec else "?", "weight": weight, "rows": None,
                    "phase": None if mode != "auto" else "hub if reachable, else the offline stand-ins"})
    return out


def _languages(sources: list[dict], training: dict) -> list[str]:
    langs = {SOURCES[s["name"]].lang for s in sources if s["name"] in SOURCES}
    langs |= set((training.get("config") or {}).get("languages") or ())
    langs = sorted(lang for lang in langs if lang and lang != "und")
    return langs or ["en"]


def _fmt(x, digits: int = 4) -> str:
    return "n/a" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def _fmt_lr(x) -> str:
    return "n/a" if x is None else f"{x:g}"     # 5e-06, not 0.0000


def model_card(cfg: MambaSWELUConfig, template: ChatTemplate, *, training: Optional[dict] = None,
               step: Optional[int] = None, result: Optional[dict] = None, sources: Optional[list] = None,
               evaluation: Optional[str] = None, base_model: Optional[str] = None,
               license: str = "other", end_id: int = 50256) -> str:
    """README.md text. `result`: the run's result.json; `sources`: `sources_from_stats(...)` (default:
    from the training metadata); `evaluation`: a markdown table."""
    training = training or {}
    run_cfg = training.get("config") or {}
    kind = training.get("kind") or "fine-tune"
    strategy = run_cfg.get("strategy") if kind != "pretrain" else "pretraining (mambaft pretrain)"
    sources = sources if sources is not None else sources_from_training(training)
    evaluation_lines = ["## Evaluation", "", evaluation.strip(), ""] if evaluation else []
    return "\n".join(_front_matter(training, sources, base_model, license) + _usage(cfg, kind, strategy)
                     + _chat_format(template, end_id) + _training(cfg, training, strategy, step, result)
                     + _data(sources) + evaluation_lines + _limits(cfg))


def _front_matter(training: dict, sources: list[dict], base_model: Optional[str], license: str) -> list[str]:
    """The Hub's YAML header: licence, base model, the hub datasets among the sources, languages, tags."""
    run_cfg = training.get("config") or {}
    hub_ids = sorted({SOURCES[s["name"]].hub_id.split(":")[0] for s in sources
                      if s["name"] in SOURCES and SOURCES[s["name"]].hub_id and s.get("origin", "").startswith("hub")})
    if base_model is None:
        base = str(run_cfg.get("base") or run_cfg.get("init_from") or "")
        base_model = ORIGINAL_BASE if base.endswith(".pt") else (base or "mambaft demo base (data/demo_base)")
    yaml = ["---", f"license: {license}"]
    if license == "other":
        yaml.append("license_name: per-source")   # the data sources' licences, listed below
    yaml += [f"base_model: {base_model}", "datasets:" + ("" if hub_ids else " []")]
    yaml += [f"- {h}" for h in hub_ids]
    yaml += ["language:"] + [f"- {lang}" for lang in _languages(sources, training)]
    yaml += ["pipeline_tag: text-generation", "library_name: transformers",
             "tags:", "- mambaswelu", "- mambaft", "- custom_code", "---", ""]
    return yaml


def _usage(cfg: MambaSWELUConfig, kind: str, strategy: Optional[str]) -> list[str]:
    """The title, what the model is, and how to load and run it with transformers."""
    title = "base model (mambaft pretrain)" if kind == "pretrain" else f"chat model ({strategy or 'mambaft'})"
    return [f"# MambaSWELU {title}", "",
            f"A MambaSWELU ({cfg.n_layers} blocks, d_model {cfg.d_model}, architecture "
            f"`{cfg.architecture}`) "
            + ("pretrained by mambaft (a base model: it continues text, it was not trained to chat)"
               if kind == "pretrain" else "fine-tuned into a chat model with mambaft")
            + ", exported by `mambaft export`. It loads in "
            "`transformers` with `trust_remote_code=True` (the model code is in this folder; mambaft "
            "is not needed).", "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "tok = AutoTokenizer.from_pretrained(DIR, trust_remote_code=True)",
            "model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)",
            "ids = tok.apply_chat_template([{\"role\": \"user\", \"content\": \"Hello!\"}], add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)",
            "out = model.generate(**ids, max_new_tokens=64)",
            "print(tok.decode(out[0, ids[\"input_ids\"].shape[1]:], skip_special_tokens=True))",
            "```", ""]


def _chat_format(template: ChatTemplate, end_id: int) -> list[str]:
    """The template the model was trained with, and which tokens were trained."""
    return ["## Chat format", "",
            f"The template the model was trained with (`{template.name}`), as `chat_template` in "
            "tokenizer_config.json:", "",
            "```",
            f"{template.system_prefix}{{system}}", f"{template.user_prefix}{{user}}",
            f"{template.assistant_prefix}{template.answer_lead}{{answer}}{template.end_of_turn}",
            "```", "",
            f"Each answer ends with the end token `{template.end_of_turn}` (id {end_id}), the "
            "`eos_token_id` of generation_config.json, which holds nothing else: `generate(do_sample="
            "False)` is plain greedy. mambaft's chat samples with " + _chat_sampling() + "; "
            "`repetition_penalty` and `no_repeat_ngram_size` look at the reply only, as in mambaft. "
            "Trained tokens are the answer (with its leading space) and the end token: the template's "
            "`{% generation %}` block, so `return_assistant_tokens_mask=True` (TRL's assistant-only "
            "loss) masks the same tokens as mambaft.", ""]


def _chat_sampling() -> str:
    """mambaft chat's default sampling, as generate() keyword arguments."""
    s = ChatSettings()
    return (f"`do_sample=True, temperature={s.temperature}, top_k={s.top_k}, top_p={s.top_p}, "
            f"repetition_penalty={s.repetition_penalty}, max_new_tokens={s.max_new_tokens}`")


def _training(cfg: MambaSWELUConfig, training: dict, strategy: Optional[str], step: Optional[int],
              result: Optional[dict]) -> list[str]:
    """Steps, final losses and the main settings: from result.json when given, else the training metadata."""
    run_cfg = training.get("config") or {}
    steps = (result or {}).get("steps", training.get("step", step))
    losses = (result or {}).get("losses") or []
    train_loss = losses[-1] if losses else training.get("final_train_loss")
    val_loss = (result or {}).get("val_loss", training.get("val_loss", training.get("final_val_loss")))
    return ["## Training", "",
            f"- strategy: {strategy or 'n/a'}",
            f"- optimizer steps: {_fmt(steps)}",
            f"- final training loss: {_fmt(train_loss)}; validation loss: {_fmt(val_loss)}",
            f"- learning rate {_fmt_lr(run_cfg.get('lr'))}, rows per step "
            f"{_fmt(run_cfg.get('batch_size', 0) * run_cfg.get('grad_accum', 0) * run_cfg.get('num_gpus', 0) or None)}, "
            f"max_seq_len {_fmt(run_cfg.get('max_seq_len', cfg.max_seq_len))}", ""]


def _data(sources: list[dict]) -> list[str]:
    """One table row per source, with its licence: the card's `license: other` stands for this table."""
    lines = ["## Data", "",
             "| source | origin | weight | rows | licence |", "|---|---|---|---|---|"]
    for s in sources:
        phase = f" ({s['phase']})" if s.get("phase") else ""
        lines.append(f"| {s['name']}{phase} | {s.get('origin', '?')} | {_fmt(s.get('weight'), 2)} | "
                     f"{_fmt(s.get('rows'))} | {s.get('license', '?')} |")
    return lines + ["", "The model inherits each source's licence terms; `license: other` in the header "
                    "stands for this table.", ""]


def _limits(cfg: MambaSWELUConfig) -> list[str]:
    """What the model cannot do: its context reach (by architecture), quality, generation, formats."""
    lines = ["## Limits", ""]
    if cfg.architecture == "selective":
        lines += [f"- `selective` architecture: mambaft's context repair adds a gated selective scan to "
                  f"every block, so an output can depend on every earlier token; whether the model uses "
                  f"that reach depends on how far training opened the gates. Positions past "
                  f"{cfg.max_seq_len} reuse the last learned position."]
    else:
        lines += [f"- The as-trained architecture sees only the last {cfg.receptive_field} tokens "
                  f"(1 + {cfg.n_layers} blocks x {cfg.d_conv - 1}): it cannot use anything said earlier "
                  f"in a conversation, whatever max_seq_len ({cfg.max_seq_len}) says. Past "
                  f"{cfg.max_seq_len} tokens generation follows the original code (it crops the input "
                  "to the last max_seq_len tokens)."]
    return lines + ["- A small model trained briefly: answers are often wrong, repetitive or off-topic; "
                    "do not rely on them.",
                    "- Batched generation supports left padding; beam search is refused (num_beams > 1).",
                    "- No GGUF / llama.cpp / Ollama: llama.cpp has no implementation of this architecture.", ""]
