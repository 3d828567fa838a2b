"""Run configuration: one typed dataclass, the plan's strategies as presets, one `make_config`.

Every entry point (notebooks, CLI, tests) builds its config through
``make_config(strategy, budget="plan", **overrides)``: the preset, the budget layer ("cpu": what the
course trains without a GPU), then the overrides; unknown keys and wrong types are refused with the
field named, and `config_origins` says where each value came from.

    mambaft config conversational lr=1e-4     # print a resolved config and its arithmetic
    mambaft config quick --budget cpu         # the course's CPU numbers, each with its origin
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from mambaft.errors import UserError

STRATEGIES = ("quick", "conversational", "specialized", "smoke")
DOMAINS = ("code", "science", "french")


@dataclass
class Config:
    # --- what to train -------------------------------------------------------------------------
    strategy: str = "conversational"
    base: str = ""                 # original .pt or mambaft model folder; "" = the embedded demo base
    architecture: Literal["original", "selective"] = "original"  # "selective": the context repair
    ssm_state: int = 16            # SSM state size N of the selective upgrade (ignored for "original")
    selective_lr_mult: float = 10.0  # lr x this for the upgrade's new parameters (gates start at 0)

    # --- data ----------------------------------------------------------------------------------
    # Source name -> mixing weight. Names are registered in mambaft.data (hub loaders when online).
    sources: dict = field(default_factory=lambda: {"sharegpt": 1.0, "oasst": 1.0, "dolly": 1.0})
    # What the same strategy uses when the hubs cannot be reached (registry packages only).
    offline_sources: dict = field(default_factory=lambda: {
        "sharegpt_offline": 1.0, "chitchat": 0.3, "chatterbot_en": 0.2, "wiki_en": 0.5, "olmo_qa": 0.5,
        "skills_en": 0.3})
    data_mode: Literal["auto", "hub", "offline"] = "auto"  # auto: hub if reachable, else offline
    max_examples_per_source: Optional[int] = None          # cap, for quick looks and smoke runs
    languages: tuple = ("en",)
    train_on: Literal["all_assistant", "last_assistant"] = "all_assistant"
    val_fraction: float = 0.02
    max_seq_len: int = 1024        # the model's position table holds 1024 positions
    # Drop conversations with a trained reply longer than this many tokens (None: keep all). The CPU
    # budget sets it for quick (CPU_BUDGET below): the model decides to stop from the 19 tokens it sees.
    max_reply_tokens: Optional[int] = None
    # Conversations packed back to back, batch_size x max_seq_len tokens per micro-batch (the memory of an
    # unpacked one): one row with no padding for the conv-only model, batch_size rows for the selective
    # one. Positions and the mixers restart at each conversation, so every conversation trains exactly
    # as alone (mambaft.train.batches). On by default: exact (tests/test_packing.py), and on the demo's
    # short Q/A rows a packed step does 4-5x the conversations of a sorted one (docs/demo_recipe.md).
    packing: bool = True
    # Drop the tokens no trained prediction sees: the as-trained model's prediction reads the last 19
    # tokens only, so a long prompt or user turn keeps just its last 19 (exact: every trained token
    # keeps its logits, loss and gradient; see mambaft.train.trim). 12.8-14.0% fewer tokens to compute on
    # the offline sets (benchmarks/README.md). The conv-only architecture only: make_config turns it
    # off for "selective" unless it is asked for (where it is refused), so it is on wherever it is exact.
    trim_context: bool = True

    # --- optimisation (AdamW, linear warmup then decay to min_lr_ratio * lr) ------------------
    lr: float = 5e-6
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.95            # as in pretraining (mambaswelu.md)
    warmup_steps: int = 1000
    max_steps: int = 25_000        # optimizer steps (one step = batch_size x grad_accum x num_gpus rows)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    grad_clip: float = 1.0
    batch_size: int = 2            # rows per GPU per micro-batch
    grad_accum: int = 16
    num_gpus: int = 6              # world size the plan assumes; the launcher's real value wins at run time
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 where supported
    # The DDP gradient all-reduce (2+ processes): "bf16" sends the gradients as bf16 (torch's
    # bf16_compress_hook: 2 B per trainable parameter instead of 4, 395 -> 198 MB per step at 124M,
    # through host memory when NCCL_P2P_DISABLE=1); weights, AdamW moments and the accumulated gradients
    # stay fp32 (the master copy). "auto": bf16 on CUDA, fp32 on CPU (gloo: a rehearsal, kept exact).
    grad_comm: Literal["auto", "fp32", "bf16"] = "auto"
    # torch.compile each block for training (nn.Module.compile: the state-dict keys do not change), with
    # the kernels' plain-PyTorch twins inside (MAMBAFT_KERNELS=reference semantics) so that inductor can
    # fuse their elementwise chains; the loss then holds the full fp32 logits (2,048 trained tokens x
    # 50,257 x 4 B = 0.41 GB, and as much for their gradient). Off by default: fusion changes fp32 rounding (the run is no longer
    # bit-identical to an uncompiled one; tests/test_train_loop.py bounds the difference), every new
    # row length may recompile, and its speed on a GPU has not been measured here (no GPU was lent).
    compile_blocks: bool = False
    seed: int = 1337

    # --- checkpoints and evaluation -----------------------------------------------------------
    save_every: int = 1000
    keep_last: int = 5             # plus the best by validation loss
    eval_every: int = 1000
    eval_batches: int = 50
    eval_replies: int = 16         # held-out val questions answered greedily at each evaluation (0 = off)
    # Which checkpoint the course evaluates as "fine-tuned" (mambaft.train.choice): "behaviour" (stop
    # rate - rep_3 - empty rate of those replies), "val_loss" (lowest) or "last".
    checkpoint_choice: Literal["behaviour", "val_loss", "last"] = "behaviour"
    export_original: bool = False  # also write the original .pt format the user's chat script loads

    # --- specialized strategy: phase 2 on one domain --------------------------------------------
    domain: Optional[str] = None   # code | science | french
    phase2_steps: int = 20_000     # plan: 15-30k
    phase2_sources: dict = field(default_factory=dict)
    phase2_offline_sources: dict = field(default_factory=dict)
    phase2_text_fraction: float = 0.3  # share of phase 2's domain rows made from plain domain text
    # How phase 2 trains plain text: "chat" = "continue this text" conversations (mambaft.data.text_chat),
    # which keep the chat format; "text" = packed continued pretraining, which taught the demo to never stop.
    phase2_text_format: Literal["chat", "text"] = "chat"
    phase2_replay_fraction: float = 0.3  # share of phase 2's train rows replayed from phase 1 (anti-forgetting)

    # --- derived numbers: properties, never stored ------------------------------------------------
    @property
    def global_batch(self) -> int:
        """Rows per optimizer step: batch_size x grad_accum x num_gpus."""
        return self.batch_size * self.grad_accum * self.num_gpus

    @property
    def tokens_per_step(self) -> int:
        """Upper bound (rows are padded or packed to max_seq_len)."""
        return self.global_batch * self.max_seq_len

    @property
    def rows_seen(self) -> int:
        return self.global_batch * self.max_steps

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# The plan's strategies, each a small diff against the defaults above (one source of truth).
PRESETS: dict[str, dict[str, Any]] = {
    # Plan strategy 1. 4 rows x 8 accum x 6 GPUs = 192 rows/step; x 10k steps = 1.92M rows,
    # about 37 epochs of Alpaca-52k (recipes use 1-3): the planner warns about it before training.
    "quick": dict(
        sources={"alpaca": 1.0},
        # offline: short answers that end, like Alpaca's: small talk (chatterbot, all of it), the first
        # sentence of wiki summaries, science questions answered by the gold option as a sentence
        # (olmo_qa), and the generated sums and short lists of skills_en (Alpaca's arithmetic and
        # list items; synthetic, named as such in the card)
        offline_sources={"wiki_en_first": 0.6, "olmo_qa": 0.4, "chatterbot_en": 1.0, "skills_en": 0.5},
        lr=1e-5, weight_decay=0.01, warmup_steps=500, max_steps=10_000,
        batch_size=4, grad_accum=8, max_seq_len=512,
    ),
    # Plan strategy 2 (recommended) = the defaults: 2 x 16 x 6 = 192 rows/step x 1024 tokens
    # = 196,608 tokens/step; x 25k steps = 4.9B tokens, more than the whole pretraining (3.1B).
    "conversational": dict(),
    # Plan strategy 3: phase 1 is "conversational", phase 2 trains phase2_steps on one domain.
    "specialized": dict(domain="french", phase2_steps=20_000),
    # Tiny, for CPU and CI: 4 x 1 x 1 = 4 rows/step x 256 tokens = 1,024 tokens/step.
    "smoke": dict(
        sources={"alpaca": 1.0}, data_mode="offline",
        offline_sources={"wiki_en": 1.0, "chatterbot_en": 1.0},
        max_examples_per_source=400, max_seq_len=256,
        lr=1e-3, weight_decay=0.0, warmup_steps=10, max_steps=60,
        batch_size=4, grad_accum=1, num_gpus=1, precision="fp32",
        save_every=20, keep_last=2, eval_every=20, eval_batches=4,
    ),
}

# --- the budget: a named layer of make_config between the preset and the overrides ------------------
# "plan": the preset as the plan sized it (GPUs). "cpu": what the course trains when no GPU is visible
# (`make_config(strategy, budget="cpu")`); `config_origins` says where each value came from.
BUDGETS = ("plan", "cpu")
ROOT = Path(__file__).resolve().parents[1]
DEMO_BASE = ROOT / "data" / "demo_base"   # the embedded demo base model: what base="" means

# What the course trains when no GPU is visible: under the 15-minute target on 2 cores. `make demo`
# (quick, 300 steps of 8 rows) took 3.4 min on a quiet 2-core Sapphire Rapids (bf16 autocast), and
# 4.2-5.3 min per run pinned to one core, AVX2 or bf16 (README). Each strategy keeps its data sources
# and chat template: only sizes move (reply lengths included).
CPU_BUDGET: dict[str, dict[str, Any]] = {
    # 8 rows x 1 accum x 1 process = 8 rows/step; x 300 steps = 2,400 rows, ~2 epochs of the ~1,170
    # weighted train rows that 800 examples per source leave after filtering (seed 0: wiki 640 unique
    # x 0.6, olmo_qa 762 x 0.4, chatterbot 479 x 1.0).
    # Replies of at most 24 tokens (a GPT-2 token is ~4 characters: about 100 characters). The model
    # decides to stop from the 19 tokens it sees: a reply it learns to end must end near them. Measured
    # over seeds 0-2, at the 6 checkpoints of steps 175-300 of each (greedy replies to 32 held-out
    # questions, native bf16), lowest stop rate / highest rep_3 / highest empty rate of the 18:
    #   no limit 0.00 / 0.97 / 0.47;  32: 0.53 / 0.68 / 0.41;  24: 0.97 / 0.24 / 0.38;  16: 0.81 / 0.32 / 0.41.
    "quick": dict(max_steps=300, max_examples_per_source=800, max_reply_tokens=24),
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
# The demo base (17.7M parameters, 2 h 45 min of CPU pretraining in two stages) needs a larger step than the plan's lr
# (chosen for 124M): 1e-3 packed stopped most often with the most distinct replies of the four
# settings tried on quick (5e-4 / 1e-3 sorted, 3e-4 / 1e-3 packed; docs/demo_recipe.md).
DEMO_LR: dict[str, float] = {"quick": 1e-3, "conversational": 1e-3, "specialized": 1e-3, "smoke": 1e-3}


# What phase 2 of "specialized" trains on, per domain (online hub sources / offline registry ones).
DOMAIN_SOURCES: dict[str, dict[str, dict[str, float]]] = {
    "code": {"hub": {"codealpaca": 1.0, "stackoverflow": 0.5},
             "offline": {"python_docs": 1.0, "sharegpt_code": 1.0}},   # ShareGPT turns with code blocks
    "science": {"hub": {"arxiv": 1.0, "pubmed": 1.0},          # raw text: continued pretraining
                "offline": {"olmo_qa": 1.0, "wiki_en_text": 0.5}},       # raw text stands in for papers
    "french": {"hub": {"oasst": 1.0},                          # oasst filtered to lang="fr"
               "offline": {"chatterbot_fr": 1.0, "wiki_fr": 1.0, "french_text": 0.5, "skills_fr": 0.5}},
}


class ConfigError(UserError, ValueError):
    """A config value is unknown, of the wrong type, or out of range (the message names the field)."""


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    """Coerce lossless cases (int -> float, list -> tuple) and refuse the rest, naming the field."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is typing.Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(name, value, inner[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name}={value!r}: expected one of {', '.join(map(repr, args))}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}={value!r}: expected a number")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{name}={value!r}: expected an integer")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}={value!r}: expected true or false")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}={value!r}: expected a string")
        return value
    if annotation is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}={value!r}: expected a list")
        return tuple(value)
    if annotation is dict:
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                for k, v in value.items()):
            raise ConfigError(f"{name}={value!r}: expected a mapping of source name -> weight >= 0")
        return {k: float(v) for k, v in value.items()}
    return value


def _validate(cfg: Config) -> None:
    for f in dataclasses.fields(cfg):   # NaN passes every "< 0" test below, inf every "> 0": refuse both first
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{f.name}={v!r}: must be a finite number")
        if isinstance(v, dict) and any(isinstance(w, float) and not math.isfinite(w) for w in v.values()):
            raise ConfigError(f"{f.name}={v!r}: weights must be finite numbers")
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"strategy={cfg.strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if cfg.domain is not None and cfg.domain not in DOMAINS:
        raise ConfigError(f"domain={cfg.domain!r}: expected one of {', '.join(DOMAINS)}")
    positive = ("lr", "max_steps", "batch_size", "grad_accum", "num_gpus", "max_seq_len",
                "save_every", "keep_last", "eval_every", "ssm_state")
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{name}={getattr(cfg, name)!r}: must be > 0")
    if cfg.max_reply_tokens is not None and cfg.max_reply_tokens <= 0:
        raise ConfigError(f"max_reply_tokens={cfg.max_reply_tokens!r}: must be > 0 (or null: no limit)")
    for name in ("warmup_steps", "weight_decay", "grad_clip", "eval_batches", "phase2_steps",
                 "selective_lr_mult", "eval_replies"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name}={getattr(cfg, name)!r}: must be >= 0")
    for name in ("min_lr_ratio", "val_fraction", "phase2_text_fraction", "beta1", "beta2"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ConfigError(f"{name}={getattr(cfg, name)!r}: must lie in [0, 1]")
    if not 0.0 <= cfg.phase2_replay_fraction < 1.0:
        raise ConfigError(f"phase2_replay_fraction={cfg.phase2_replay_fraction!r}: must lie in [0, 1) "
                          "(1 would leave no domain rows)")
    if cfg.trim_context and cfg.architecture != "original":
        raise ConfigError("trim_context=true needs architecture='original': the selective scan carries "
                          "state across the whole row, so no token can be dropped")
    if cfg.max_seq_len > 1024 and cfg.architecture == "original":
        raise ConfigError(f"max_seq_len={cfg.max_seq_len}: the model's position table holds 1024")


def resolve_base(base: Union[str, Path, None] = "") -> Path:
    """The base model a run starts from: "" (or None) -> the embedded demo base; else the given
    checkpoint. Either is checked to exist, so a wrong path fails before any work starts."""
    path = Path(base) if base else DEMO_BASE
    if not path.exists():
        hint = " (rebuild it: mambaft pretrain --out data/demo_base)" if not base else ""
        raise FileNotFoundError(f"base model {path}: no such file or folder{hint}")
    return path


def _is_demo_base(base: Union[str, Path, None]) -> bool:
    return Path(base or DEMO_BASE).resolve() == DEMO_BASE.resolve()


def budget_layer(strategy: str, budget: str = "plan", base: Union[str, Path, None] = "") -> dict[str, tuple]:
    """{key: (value, origin)}: what `budget` changes in the preset of `strategy`. "plan" changes
    nothing; "cpu" applies CPU_COMMON and CPU_BUDGET[strategy], and DEMO_LR when `base` is the demo
    base. (save_every / eval_every follow the final max_steps: make_config sets them.)"""
    if budget not in BUDGETS:
        raise ConfigError(f"budget={budget!r}: expected one of {', '.join(BUDGETS)}")
    if budget == "plan":
        return {}
    layer = {}
    for k, v in {**CPU_COMMON, **CPU_BUDGET.get(strategy, {})}.items():
        plan = PRESETS.get(strategy, {}).get(k)
        layer[k] = (v, "CPU budget" + (f"; the plan's {plan!r} is sized for GPUs" if plan is not None else ""))
    if _is_demo_base(base):
        layer["lr"] = (DEMO_LR[strategy], "CPU budget: the 17.7M-parameter demo base needs a larger lr than 124M")
    return layer


def config_origins(strategy: str, budget: str = "plan", **overrides: Any) -> dict[str, str]:
    """{key: where make_config(strategy, budget, **overrides) took its value}: "preset <strategy>",
    the budget's reason, or "override"; keys left out hold the Config default (or a derived value)."""
    origins = {k: f"preset {strategy}" for k in PRESETS.get(strategy, {})}
    origins.update({k: origin for k, (_, origin) in budget_layer(strategy, budget, overrides.get("base")).items()})
    if budget == "cpu":
        for k in ("save_every", "eval_every"):
            origins[k] = f"CPU budget: {CPU_CHECKPOINTS} checkpoints per run"
    origins.update({k: "override" for k in overrides})
    return origins


def make_config(strategy: str = "conversational", budget: str = "plan", **overrides: Any) -> Config:
    """The preset for `strategy`, then the `budget` layer ("plan" | "cpu", see budget_layer), then
    `overrides`, checked. `config_origins` with the same arguments says where each value came from.

    >>> make_config("quick").global_batch     # 4 x 8 x 6
    192
    >>> make_config("quick", budget="cpu").global_batch     # 8 x 1 x 1
    8
    """
    if strategy not in PRESETS:
        raise ConfigError(f"strategy={strategy!r}: expected one of {', '.join(STRATEGIES)}")
    fields = {f.name: f for f in dataclasses.fields(Config)}
    hints = typing.get_type_hints(Config)
    unknown = sorted(set(overrides) - set(fields))
    renamed = [f"{k} is now {RENAMED[k]}" for k in unknown if k in RENAMED]
    if renamed:
        raise ConfigError(f"renamed config key(s): {'; '.join(renamed)}")
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(fields))})")
    layer = {k: v for k, (v, _) in budget_layer(strategy, budget, overrides.get("base")).items()}
    values: dict[str, Any] = {"strategy": strategy, **PRESETS[strategy], **layer, **overrides}
    if budget == "cpu":
        # CPU_CHECKPOINTS evaluated checkpoints, all kept: the checkpoint choice (mambaft.train.choice)
        # picks among them.
        for k in ("save_every", "eval_every"):
            if k not in overrides:
                values[k] = max(1, values["max_steps"] // CPU_CHECKPOINTS)
    if "strategy" in overrides and overrides["strategy"] != strategy:
        raise ConfigError(f"strategy={overrides['strategy']!r} conflicts with make_config({strategy!r})")
    if values.get("architecture") == "selective" and "trim_context" not in overrides:
        values["trim_context"] = False      # not exact with a scan that carries state across the row
    checked = {k: _check_type(k, v, hints[k]) for k, v in values.items()}
    cfg = Config(**checked)
    if cfg.strategy == "specialized" and cfg.domain is not None:
        domain = DOMAIN_SOURCES[cfg.domain]
        if not cfg.phase2_sources:
            cfg.phase2_sources = dict(domain["hub"])
        if not cfg.phase2_offline_sources:
            cfg.phase2_offline_sources = dict(domain["offline"])
    _validate(cfg)
    return cfg


# Keys an older mambaft saved under another name (old -> new). `d_state` was the selective state size;
# the model config's `d_state` is the width of the dead x_proj, so the run config says `ssm_state`,
# as the model config does for the same number.
RENAMED = {"d_state": "ssm_state"}
# Keys an older mambaft saved that no longer exist (nothing ever read them).
RETIRED = ("test_at",)


def saved_config_dict(d: dict) -> dict:
    """A config dict as saved by any mambaft version -> today's key names (RENAMED, RETIRED)."""
    d = {k: v for k, v in d.items() if k not in RETIRED}
    for old, new in RENAMED.items():
        if old in d:
            value = d.pop(old)
            if new in d and d[new] != value:
                raise ConfigError(f"saved config has {old}={value!r} and {new}={d[new]!r}: {old} is the old "
                                  f"name of {new}; remove one")
            d.setdefault(new, value)
    return d


def config_from_dict(d: dict) -> Config:
    """Rebuild a config saved with `Config.to_dict()` (inside checkpoints and run folders), by this
    or an older mambaft (see `saved_config_dict`)."""
    d = saved_config_dict(d)
    return make_config(d.pop("strategy", "conversational"), **d)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` strings (CLI) -> overrides; values are read as JSON when they parse, else as text."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            out[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = raw
    return out
