"""Does a model use context beyond its 19-token reach? Loss by token position and a name-recall probe.

Loss by position: over windows of plain text, the mean next-token loss at context length t = 1..L-1
(predicting token t from tokens 0..t-1). The original MambaSWELU sees 1 + 6 x 3 = 19 tokens, so its
curve is flat past t ~ 19; a model that uses longer context keeps going down.

Recall probe: "My name is Alice." + 50+ tokens of held-out text + " What is my name? My name is",
scored by the log-probability of " Alice" against 9 distractor names (all single GPT-2 tokens).
Every filler is asked once with EACH of the 10 names as the answer, so a model whose prediction
cannot depend on the name (the original: the name lies > 19 tokens back) scores exactly chance:
accuracy 1/10, mean rank 5.5.

    mambaft context --help
    mambaft context measure --model A --model B --text sotu --out outputs/context
    mambaft context demo --out outputs/context_demo   # train, upgrade, measure (CPU)

Reach: how far back a changed token still moves the last logits (float64): 19 for the original.

Ablation: the same model's loss on the same tokens with its context cut to the last 19 tokens (true
positions kept), minus its full-context loss: exactly 0 for the original, > 0 for a model that uses
what lies further back. It needs no second model to compare with.

The demo experiment (train, upgrade, measure on CPU) is the recipe `mambaft.recipes.context_repair`.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

# Single GPT-2 tokens with a leading space (checked when items are built). The probe asks the first
# 10; the demo's recall training uses only the others, so the probe's names are never a trained answer.
PROBE_NAMES = ("Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Jack", "Kate")
TRAIN_NAMES = ("Leo", "Maria", "Nina", "Oscar", "Paul", "Rose", "Sam", "Tom", "Victor", "Anna", "Peter",
               "John", "Mary", "James", "Sarah", "Robert", "Linda", "Michael", "Laura", "Daniel", "Julia",
               "Thomas", "Sophie", "George", "Lucy", "Martin", "Helen", "Charles", "Clara", "Walter",
               "Diana", "Hugo", "Eva", "Felix", "Iris", "Oliver", "Ruth", "Simon", "Vera", "Adam", "Ben",
               "Chris", "Dan", "Eric", "Fred", "Greg", "Ian", "Jane", "Karl", "Lisa", "Mark", "Ned", "Pam",
               "Rita", "Steve", "Ted", "Will", "Zoe", "Joe", "Max", "Amy", "Ray", "Kim", "Tim", "Lee")
INTRO, QUESTION = "My name is{name}.", " What is my name? My name is"


# --- data ----------------------------------------------------------------------------------------
def token_stream(tok, texts: Sequence[str]) -> torch.Tensor:
    """Documents joined by a blank line, tokenized: [N] long (pretraining used no separator token)."""
    ids: list[int] = []
    for enc in tok.encode_batch([t.strip() + "\n\n" for t in texts if t.strip()]):
        ids.extend(enc)
    return torch.tensor(ids, dtype=torch.long)


def text_windows(stream: torch.Tensor, length: int, n: int) -> torch.Tensor:
    """n windows of `length` tokens, evenly spaced over the stream (deterministic): [n, length]."""
    if stream.numel() < length + 1:
        raise ValueError(f"text has {stream.numel()} tokens: too short for windows of {length}")
    n = min(n, stream.numel() // length)
    starts = torch.linspace(0, stream.numel() - length, n).long()
    return torch.stack([stream[s:s + length] for s in starts.tolist()])


def load_texts(sources: Sequence[str], split: str) -> list[str]:
    """Plain texts of mambaft.data.text sources (names, local files or folders), one split."""
    from mambaft.data.text import load_text_documents
    return [d["text"] for s in sources for d in load_text_documents(s, split=split)]


# --- loss by position ------------------------------------------------------------------------------
def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log p(target) [...] from logits [..., V], reduced in float64: with fp32 sums over 50,257 logits
    the rounding depends on the tensor's layout (3e-5 relative, measured), which would show up as a
    fake loss difference between a full window and the same position cut out of it."""
    x = logits.double()
    return torch.logsumexp(x, -1) - x.gather(-1, targets[..., None]).squeeze(-1)


@torch.no_grad()
def loss_by_position(model, windows: torch.Tensor, batch_size: int = 8, chunk: int = 64) -> torch.Tensor:
    """Per-window, per-position next-token loss [n, L-1]; column t-1 = context length t.
    The vocabulary projection runs `chunk` positions at a time (8 x 64 x 50257 float64 = 206 MB)."""
    was = model.training
    model.eval()
    dev = model.token_embedding.weight.device
    out = []
    try:
        for i in range(0, windows.shape[0], batch_size):
            ids = windows[i:i + batch_size].to(dev)
            f = model.features(ids)[:, :-1]                                   # [b, L-1, D]
            tgt = ids[:, 1:]                                                  # [b, L-1]
            parts = []
            for s in range(0, f.shape[1], chunk):
                parts.append(token_nll(model.lm_head(f[:, s:s + chunk]), tgt[:, s:s + chunk]).float())
            out.append(torch.cat(parts, dim=1).cpu())
    finally:
        model.train(was)
    return torch.cat(out)


def summarize_curve(per_window: torch.Tensor, rf: int = 19) -> dict:
    """Numbers for a loss-by-position table. per_window: [n, L-1] from `loss_by_position`.

    near_rf: mean loss at context rf..2rf-1 (just past the original's reach); far: over the last
    quarter of the window; gain_beyond_rf = near_rf - far (about 0 when nothing past rf is used),
    with its standard error over windows."""
    n, T = per_window.shape
    curve = per_window.mean(0)
    lo, hi = rf - 1, min(2 * rf - 1, T)                                       # columns of t = rf..2rf-1
    far0 = max(hi, T - T // 4)
    gains = per_window[:, lo:hi].mean(1) - per_window[:, far0:].mean(1)       # [n]
    buckets, b = {}, 1
    while b <= T:                                                             # t in [b, 2b)
        buckets[f"{b}-{min(2 * b, T + 1) - 1}"] = round(float(curve[b - 1:min(2 * b - 1, T)].mean()), 4)
        b *= 2
    return {"windows": n, "length": T + 1, "loss_mean": round(float(curve.mean()), 4),
            "loss_by_bucket": buckets, "near_rf": round(float(per_window[:, lo:hi].mean()), 4),
            "far": round(float(per_window[:, far0:].mean()), 4),
            "gain_beyond_rf": round(float(gains.mean()), 4),
            "gain_beyond_rf_se": round(float(gains.std() / math.sqrt(max(1, n))), 4)}


def paired_advantage(ref: torch.Tensor, other: torch.Tensor, rf: int = 19) -> dict:
    """How much lower `other`'s loss is than `ref`'s on the SAME tokens, by region of context length
    (mean over windows +- standard error). [n, L-1] each. Better unigram statistics lower every region
    alike; using context past the reach lowers the later regions more."""
    d = ref - other                                                          # > 0: other is better
    T = d.shape[1]                                                           # column t-1 = context t
    return region_mean_se(d, {f"1-{rf - 1}": range(0, rf - 1), f"{rf}-63": range(rf - 1, min(63, T)),
                              f"64-{T}": range(min(63, T), T)})


def region_mean_se(d: torch.Tensor, regions: dict) -> dict:
    """d [n windows, T columns] -> {region: [mean, standard error over windows]} of each window's mean
    over the region's columns (empty regions are left out). 3 significant digits: an exact 0 stays 0
    and a small effect still shows."""
    out = {}
    for name, cols in regions.items():
        cols = list(cols)
        if cols:
            per = d[:, cols].mean(1)                                         # [n]
            se = per.std() / math.sqrt(max(1, per.numel()))
            out[name] = [float(f"{float(per.mean()):.3g}"), float(f"{float(se):.3g}")]
    return out


@torch.no_grad()
def context_ablation(model, windows: torch.Tensor, full: torch.Tensor, keep: int = 19, every: int = 8,
                     batch_size: int = 64) -> dict:
    """What the context beyond `keep` tokens is worth to `model`, on the same tokens: the loss when the
    context is cut to the last `keep` tokens (their true positions kept) minus the full-window loss
    (`full` [n, L-1] from `loss_by_position`), at context lengths t = keep+1, keep+1+every, ...

    The original reaches exactly 19 tokens, so cutting to 19 changes nothing: 0 up to float rounding.
    A model that uses what lies further back loses loss when it is cut: > 0. Unlike a comparison with
    another model, nothing else differs (same weights, same tokens, same positions).
    Returns {region: [mean, standard error over windows]} in nats, regions "keep+1-63" and "64-L"."""
    was = model.training
    model.eval()
    dev = model.token_embedding.weight.device
    n, L = windows.shape
    ts = list(range(keep + 1, L, every))                                     # context lengths cut
    rows = [(w, t) for w in range(n) for t in ts]
    cut = torch.empty(len(rows))
    try:
        for i in range(0, len(rows), batch_size):
            part = rows[i:i + batch_size]
            ids = torch.stack([windows[w, t - keep:t] for w, t in part]).to(dev)           # [b, keep]
            pos = torch.stack([torch.arange(t - keep, t) for _, t in part]).to(dev)        # true positions
            tgt = torch.tensor([int(windows[w, t]) for w, t in part], device=dev)
            logits = model.lm_head(model.features(ids, positions=pos)[:, -1])               # [b, V]
            cut[i:i + len(part)] = token_nll(logits, tgt).float().cpu()
    finally:
        model.train(was)
    gain = cut.view(n, len(ts)) - full[:, [t - 1 for t in ts]]               # [n, len(ts)]
    return region_mean_se(gain, {f"{keep + 1}-63": [j for j, t in enumerate(ts) if t < 64],
                                 f"64-{L - 1}": [j for j, t in enumerate(ts) if t >= 64]})


def log_bins(curve: Sequence[float], ratio: float = 1.15) -> tuple[list, list]:
    """Mean of a per-position curve over bins whose width grows with t (plots of noisy curves).
    Returns (bin centres t, means)."""
    xs, ys, a = [], [], 1
    while a <= len(curve):
        b = max(a + 1, int(a * ratio) + 1)                                    # positions [a, b)
        seg = curve[a - 1:min(b, len(curve) + 1) - 1]
        xs.append((a + min(b, len(curve) + 1) - 1) / 2)
        ys.append(sum(seg) / len(seg))
        a = b
    return xs, ys


# --- recall probe -----------------------------------------------------------------------------------
@dataclass
class RecallItem:
    ids: list                  # the prompt, ending with " My name is"
    candidates: list           # token ids of the candidate names
    answer: int                # index into candidates
    gap: int                   # tokens from the name to the end of the prompt


def make_recall_items(tok, filler: torch.Tensor, n_fillers: int = 10, names: Sequence[str] = PROBE_NAMES,
                      min_gap: int = 50, max_gap: int = 100, seed: int = 0) -> list[RecallItem]:
    """n_fillers x len(names) items: each filler (held-out text) asked with every name as the answer."""
    cands = []
    for name in names:
        ids = tok.encode(" " + name)
        if len(ids) != 1:
            raise ValueError(f"probe name {name!r} is {len(ids)} tokens in this tokenizer; use single-token names")
        cands.append(ids[0])
    rng = random.Random(seed)
    question = tok.encode(QUESTION)
    items = []
    for _ in range(n_fillers):
        gap = rng.randint(min_gap, max_gap)
        n_fill = gap - len(question) - 1                                      # "." follows the name
        if n_fill < 1 or filler.numel() < n_fill:
            raise ValueError(f"filler too short or gap {gap} too small for the question")
        s = rng.randrange(0, filler.numel() - n_fill + 1)
        body = filler[s:s + n_fill].tolist()
        for a, c in enumerate(cands):
            ids = tok.encode(INTRO.format(name=" " + names[a])) + body + question
            items.append(RecallItem(ids=ids, candidates=cands, answer=a, gap=len(ids) - ids.index(c) - 1))
    return items


@torch.no_grad()
def recall_probe(model, items: Sequence[RecallItem], batch_size: int = 16) -> dict:
    """Accuracy (right name ranked first among the candidates), mean rank (1 = best), mean log-prob of
    the right name and its margin over the best distractor. Chance: 1/n accuracy, (n+1)/2 rank."""
    was = model.training
    model.eval()
    dev = model.token_embedding.weight.device
    ranks, lps, margins = [], [], []
    try:
        for i in range(0, len(items), batch_size):
            batch = items[i:i + batch_size]
            L = max(len(it.ids) for it in batch)
            ids = torch.zeros(len(batch), L, dtype=torch.long, device=dev)   # right-padded (causal)
            for b, it in enumerate(batch):
                ids[b, :len(it.ids)] = torch.tensor(it.ids)
            f = model.features(ids)
            last = torch.tensor([len(it.ids) - 1 for it in batch], device=dev)
            logp = torch.log_softmax(model.lm_head(f[torch.arange(len(batch)), last]).float(), -1)
            for b, it in enumerate(batch):
                s = logp[b, it.candidates]                                    # [n]
                right = s[it.answer]
                others = torch.cat([s[:it.answer], s[it.answer + 1:]])
                ranks.append(1 + int((others > right).sum()))
                lps.append(float(right))
                margins.append(float(right - others.max()))
    finally:
        model.train(was)
    n = len(items[0].candidates)
    return {"items": len(items), "candidates": n, "accuracy": round(sum(r == 1 for r in ranks) / len(ranks), 4),
            "chance_accuracy": round(1 / n, 4), "mean_rank": round(sum(ranks) / len(ranks), 3),
            "chance_rank": (n + 1) / 2, "mean_logprob": round(sum(lps) / len(lps), 4),
            "mean_margin": round(sum(margins) / len(margins), 4),
            "mean_gap_tokens": round(sum(it.gap for it in items) / len(items), 1)}


def reach(model, max_k: int) -> dict:
    """How far back a changed token still moves the last logits (mambaft.evaluate.diagnosis, float64):
    1 + 3 per block for the original architecture (19 at 6 blocks), up to `max_k` for an upgraded
    model once its gates opened.
    Influence is not use: the loss curve and the recall probe say whether the far tokens help."""
    from mambaft.evaluate.diagnosis import measure_receptive_field
    rf = measure_receptive_field(model, max_k=max_k, trials=1)
    ks = [k for k in (18, 19, 32, 64, 128) if k <= rf["max_k"]]
    return {"receptive_field": rf["receptive_field"], "saturated": rf["saturated"], "max_k": rf["max_k"],
            "rel_change_at": {str(k): float(f"{rf['rel_change'][k - 1]:.3g}") for k in ks}}


# --- comparing models ---------------------------------------------------------------------------------
@dataclass
class ContextReport:
    curves: dict = field(default_factory=dict)      # name -> mean loss by position, list [L-1]
    summary: dict = field(default_factory=dict)     # name -> summarize_curve(...)
    recall: dict = field(default_factory=dict)      # name -> recall_probe(...)
    advantage: dict = field(default_factory=dict)   # name -> paired_advantage(reference, name)
    advantage_curves: dict = field(default_factory=dict)  # name -> reference - name loss, by position
    reach: dict = field(default_factory=dict)       # name -> measured receptive field (see `reach`)
    ablation: dict = field(default_factory=dict)    # name -> context_ablation(...): loss lost when cut to 19
    reference: str = ""
    notes: dict = field(default_factory=dict)

    def table(self) -> str:
        rows = [f"{'model':<12} {'loss':>7} {'t~19-37':>8} {'last 1/4':>8} {'gain>19':>14} "
                f"{'recall acc':>10} {'rank':>5} {'margin':>7} {'reach':>6}"]
        for name, s in self.summary.items():
            r, rf = self.recall.get(name, {}), self.reach.get(name, {})
            span = f"{'>=' if rf.get('saturated') else ''}{rf.get('receptive_field', '?')}"
            rows.append(f"{name:<12} {s['loss_mean']:7.3f} {s['near_rf']:8.3f} {s['far']:8.3f} "
                        f"{s['gain_beyond_rf']:+8.3f}+-{s['gain_beyond_rf_se']:.3f} "
                        f"{r.get('accuracy', float('nan')):10.2f} {r.get('mean_rank', float('nan')):5.2f} "
                        f"{r.get('mean_margin', float('nan')):+7.2f} {span:>6}")
        if self.recall:
            r = next(iter(self.recall.values()))
            rows.append(f"(recall chance: accuracy {r['chance_accuracy']}, rank {r['chance_rank']}; "
                        f"name {r['mean_gap_tokens']} tokens back on average)")
        if self.ablation:
            rows.append(f"loss lost when the context is cut to the last {self.notes.get('rf', 19)} tokens "
                        "(same model, same tokens; nats +- s.e.), by context length:")
            for name, ab in self.ablation.items():
                rows.append(f"  {name:<12} " + "  ".join(f"t {k}: {m:+.4f}+-{se:.4f}" for k, (m, se) in ab.items()))
        if self.advantage:
            rows.append(f"loss advantage over {self.reference} on the same tokens (nats, +- s.e.), "
                        "by context length:")
            for name, adv in self.advantage.items():
                rows.append(f"  {name:<12} " + "  ".join(f"t {k}: {m:+.4f}+-{se:.4f}" for k, (m, se) in adv.items()))
        return "\n".join(rows)

    def save(self, out: Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "context.json").write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")
        plot_context(self, out / "context.png")
        return out / "context.json"

    @classmethod
    def load(cls, folder: Path) -> "ContextReport":
        """The report a `save(folder)` wrote (folder/context.json)."""
        path = Path(folder) / "context.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no context report here (mambaft context "
                                    "measure|demo --out FOLDER writes one)")
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def measure_context(models: dict, tok, heldout_texts: Sequence[str], length: int = 256, windows: int = 64,
                    n_fillers: int = 10, rf: int = 19, reference: Optional[str] = None) -> ContextReport:
    """Loss by position and recall probe for several models on the same held-out text; every model's
    loss is also compared token by token with `reference` (default: the first model)."""
    stream = token_stream(tok, heldout_texts)
    win = text_windows(stream, length, windows)
    # the probe prompt (5 + gap tokens) must fit the position table: gap <= length - 6
    items = make_recall_items(tok, stream, n_fillers=n_fillers, min_gap=min(50, length - 6),
                              max_gap=min(100, length - 6))
    reference = reference or next(iter(models))
    if reference not in models:
        raise ValueError(f"reference={reference!r}: not one of {list(models)}")
    rep = ContextReport(reference=reference, notes={"length": length, "windows": int(win.shape[0]), "rf": rf})
    per = {}
    for name, model in models.items():
        per[name] = loss_by_position(model, win)
        rep.curves[name] = [round(float(v), 4) for v in per[name].mean(0)]
        rep.summary[name] = summarize_curve(per[name], rf)
        rep.recall[name] = recall_probe(model, items)
        rep.reach[name] = reach(model, max_k=min(128, length - 8))
        rep.ablation[name] = context_ablation(model, win, per[name], keep=rf)
    for name in models:
        if name != reference:
            rep.advantage[name] = paired_advantage(per[reference], per[name], rf)
            rep.advantage_curves[name] = [round(float(v), 4) for v in (per[reference] - per[name]).mean(0)]
    return rep


def plot_context(rep: ContextReport, path: Optional[Path] = None):
    """Loss by position (log x) with the 19-token reach marked, and recall accuracy against chance."""
    import matplotlib
    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (ax, cx, bx) = plt.subplots(1, 3, figsize=(15, 4), gridspec_kw={"width_ratios": [2, 2, 1]})
    rf = rep.notes.get("rf", 19)
    for name, curve in rep.curves.items():
        ax.plot(*log_bins(curve), label=name, lw=1.4)
    for name, curve in rep.advantage_curves.items():
        cx.plot(*log_bins(curve), label=f"{rep.reference} - {name}", lw=1.4)
    cx.axhline(0, color="black", lw=0.6)
    for axis in (ax, cx):
        axis.axvline(rf, color="grey", ls="--", lw=1)
        axis.text(rf * 1.05, 0.97, f"{rf} tokens: the original's reach", va="top", fontsize=8,
                  transform=axis.get_xaxis_transform())                     # x in data, y in axes units
        axis.set(xscale="log", xlabel="context length t (tokens before the predicted one)")
    ax.set(ylabel="mean next-token loss (nats)", title="Loss by token position (held-out text, binned)")
    cx.set(ylabel="loss advantage (nats, same tokens)", title=f"Lower loss than {rep.reference or '-'}")
    ax.legend()
    if rep.advantage_curves:
        cx.legend()
    names = list(rep.recall)
    bx.bar(names, [rep.recall[n]["accuracy"] for n in names], color="tab:blue")
    if names:
        bx.axhline(rep.recall[names[0]]["chance_accuracy"], color="grey", ls="--", lw=1, label="chance")
        bx.legend()
    bx.set(ylim=(0, 1), ylabel="accuracy", title="Recall: a name 50+ tokens back")
    bx.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
