"""What a pretraining run reports: the base model's symptoms (loops, no end token) and its model card.

`mambaft.recipes.pretrain` calls both at the end of a run; the card is written from the run's own numbers.
"""
from __future__ import annotations

import shlex
from typing import Sequence

import torch


# --- symptom check: does it babble, loop, and never stop? -------------------------------------------
PROBE_PROMPTS = ("The history of the city", "def main():", "KING HENRY.", "The President said that",
                 "User: What is the capital of France?\nAssistant:")


def repeated_fraction(ids: Sequence[int], n: int = 4) -> float:
    """Share of n-grams that already occurred earlier in the sequence (0 = no loop, -> 1 = a loop)."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    if not grams:
        return 0.0
    seen, rep = set(), 0
    for g in grams:
        rep += g in seen
        seen.add(g)
    return rep / len(grams)


@torch.no_grad()
def symptom_check(model, tokenizer, val_rows: torch.Tensor, new_tokens: int = 80) -> dict:
    """Greedy continuations of fixed prompts (loops? end token?) and the mean probability of the end
    token over validation positions (the base never learned it: should be ~0)."""
    from mambaft.generate import generate

    model.eval()
    rows = [tokenizer.encode(p) for p in PROBE_PROMPTS]
    outs = generate(model, rows, max_new_tokens=new_tokens, temperature=0.0)
    samples, eos_emitted, rep = [], 0, []
    for p, r, o in zip(PROBE_PROMPTS, rows, outs):
        new = o[len(r):]
        eos_emitted += sum(t == tokenizer.eos_id for t in new)
        rep.append(repeated_fraction(new))
        samples.append({"prompt": p, "continuation": tokenizer.decode(new),
                        "repeated_4gram_fraction": round(rep[-1], 3)})
    sampled = generate(model, rows, max_new_tokens=new_tokens, temperature=1.0, seed=0)
    eos_sampled = sum(t == tokenizer.eos_id for r, o in zip(rows, sampled) for t in o[len(r):])
    p_eos = float("nan")
    if val_rows.shape[0]:
        ids = val_rows[:2, :256].long()
        f = model.features(ids)
        probs = torch.softmax(model.lm_head(f).float(), dim=-1)[..., tokenizer.eos_id]
        p_eos = float(probs.mean())
    model.train()
    return {"greedy_new_tokens": new_tokens, "greedy_eos_emitted": int(eos_emitted),
            "sampled_eos_emitted": int(eos_sampled),
            "mean_greedy_repeated_4gram_fraction": round(sum(rep) / len(rep), 3),
            "mean_p_end_token": p_eos, "samples": samples}


# Ten varied prompts for "what does the base know": greedy continuations should be distinct and on
# topic (a base that has learned little falls into one attractor phrase for all of them).
KNOWLEDGE_PROMPTS = ("The capital of France is", "Water is made of", "The President said that",
                     "KING HENRY.", "The whale", "def main():", "La France est un pays",
                     "In the nineteenth century,", "The Moon is", "Music is")
# Every plain-text source pretraining reads: each one's held-out split (mambaft.data.text, 5 % of
# documents by id hash, never trained on) is scored in bits per byte.
HELDOUT_SOURCES = ("wiki_en", "wiki_fr", "sotu", "shakespeare", "moby_dick", "python_docs", "french_text")


@torch.no_grad()
def knowledge_check(model, tokenizer, new_tokens: int = 24, sources: Sequence[str] = HELDOUT_SOURCES,
                    limit_docs: int = 400, max_tokens: int = 20_000) -> dict:
    """Held-out bits per byte of every source (up to `max_tokens` scored tokens each) and greedy
    continuations of KNOWLEDGE_PROMPTS: how many are distinct, and the share of them that the most
    common word 4-gram appears in (an attractor phrase shared by all prompts -> 1.0)."""
    from mambaft.evaluate.lm import load_lm
    from mambaft.evaluate.metrics import heldout_perplexity, ngrams
    from mambaft.generate import generate
    from mambaft.template import DEFAULT_TEMPLATE

    model.eval()
    lm = load_lm((model, tokenizer, DEFAULT_TEMPLATE), name="base")
    held = heldout_perplexity(lm, names=sources, limit_docs=limit_docs, max_tokens=max_tokens) if sources else {}
    rows = [tokenizer.encode(p) for p in KNOWLEDGE_PROMPTS]
    outs = generate(model, rows, max_new_tokens=new_tokens, temperature=0.0)
    conts = [tokenizer.decode(o[len(r):]) for r, o in zip(rows, outs)]
    grams: dict = {}
    for c in conts:
        for g in set(ngrams(c.lower().split(), 4)):
            grams[g] = grams.get(g, 0) + 1
    top = max(grams.values(), default=0)
    model.train()
    return {"heldout_bpb": {k: round(v["bpb"], 4) for k, v in held.items()},
            "heldout_tokens": {k: v["tokens"] for k, v in held.items()},
            "continuations": [{"prompt": p, "continuation": c} for p, c in zip(KNOWLEDGE_PROMPTS, conts)],
            "distinct_continuations": len(set(c.strip() for c in conts)),
            "top_4gram_share": round(top / len(conts), 3)}


def _knowledge_section(k) -> str:
    """The card's "what it knows" section: held-out bits per byte and greedy continuations."""
    if not k:
        return ""
    bpb = "\n".join(f"| {name} | {v:.3f} | {k['heldout_tokens'][name]:,} |" for name, v in k["heldout_bpb"].items())
    conts = "\n".join(f"- `{c['prompt']}` -> `{c['continuation'].strip()[:120]!r}`" for c in k["continuations"])
    return f"""## What it knows (measured at the end of the run)
Bits per byte on each source's held-out split (`mambaft.data.text`, never trained on; lower is better;
bytes of UTF-8 text, so the number does not depend on the tokenizer):

| held-out source | bits/byte | tokens scored |
|---|---|---|
{bpb}

Greedy continuations of {len(k['continuations'])} varied prompts ({k['distinct_continuations']} distinct; the most
common word 4-gram appears in {k['top_4gram_share']:.0%} of them):

{conts}"""


def _stages(s: dict) -> tuple[str, str]:
    """(training lines, rebuild commands) over every stage: the stages that made init_from, then this
    run. A stage's command wrote the folder the next one continues from: each gets its own folder."""
    stages = list(s.get("stages") or [])
    if not stages:
        return "", s["command"]
    here = {k: s.get(k) for k in ("command", "steps", "tokens_trained", "epochs", "train_minutes", "tokens_per_s")}
    lines = [f"- stage {i + 1}: {x['steps']:,} steps, {x['tokens_trained']:,} tokens ({x['epochs']} epochs of its "
             f"mix), {x['train_minutes']} min at {x['tokens_per_s']:,} tokens/s"
             for i, x in enumerate(stages + [here])]
    total = stages + [here]
    lines.append(f"- in all: {sum(x['steps'] for x in total):,} steps, {sum(x['tokens_trained'] for x in total):,} "
                 f"tokens, {sum(x['train_minutes'] for x in total):.1f} min of training")
    cmds, prev = [], ""
    for i, x in enumerate(total):
        args = shlex.split(x["command"])
        last = i == len(total) - 1
        folder = _arg(args, "--out") if last else f"runs/demo_base.stage{i + 1}"
        args = _set_arg(args, "--out", folder)
        if prev:
            args = _set_arg(args, "--init-from", prev)
        cmds.append(" ".join(shlex.quote(a) for a in args))
        prev = folder
    return "\n".join(lines) + "\n", "\n".join(cmds)


def _arg(args: list, flag: str) -> str:
    return args[args.index(flag) + 1] if flag in args else ""


def _set_arg(args: list, flag: str, value: str) -> list:
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


def model_card(s: dict) -> str:
    """The MODEL_CARD.md text, written from the run's own numbers."""
    c, m = s["config"], s["model_config"]
    src_lines = "\n".join(f"| {x['name']} | {x['documents']:,} | {x['train_tokens']:,} | {x['weight']} | "
                          f"{x['licence']} |" for x in s["sources"])
    sym = s["symptoms"]
    stage_lines, rebuild = _stages(s)
    samples = "\n".join(f"- `{x['prompt']!r}` -> `{x['continuation'][:160]!r}` (repeated 4-grams "
                        f"{x['repeated_4gram_fraction']})" for x in sym["samples"])
    return f"""# mambaft demo base model

A small MambaSWELU pretrained by `mambaft pretrain` so that the course runs on a 2-core CPU. It has the
architecture of the user's MambaSWELU 124M (SimplifiedMamba blocks with no selective scan, SWELU,
dense head, learned position embeddings, tied GPT-2 embedding) and was pretrained the same way
(documents concatenated WITHOUT `<|endoftext|>`), so it has the same flaws: a {m['n_layers'] * (m['d_conv'] - 1) + 1}-token
receptive field, loops, and no end token. It is a teaching stand-in, not a useful language model.

## Architecture
| | demo | 124M |
|---|---|---|
| d_model | {m['d_model']} | 1024 |
| layers | {m['n_layers']} | 6 |
| d_conv (reach {m['n_layers'] * (m['d_conv'] - 1) + 1} tokens) | {m['d_conv']} | 4 (19 tokens) |
| expand | {m['expand']} | 2 |
| dense head | {m['dense_hidden_dim']} | 2048 |
| max_seq_len | {m['max_seq_len']} | 1024 |
| dropout | {m['dropout']} | 0.1 |
| parameters | {s['parameters']:,} | 124,104,719 |

Weights are stored in bf16 (`model.safetensors`); the loader upcasts them to fp32.

## Data (split "train" of `mambaft.data.text`; the "heldout" split was never seen)
| source | documents | train tokens | weight (rows per epoch x) | licence |
|---|---|---|---|---|
{src_lines}

{c['val_fraction']:.0%} of each source's training documents were held back for the validation loss.

## Training
{stage_lines}- {"this stage" if stage_lines else "steps"}: {s['steps']:,} x {c['batch_size']} rows x {c['seq_len']} tokens = {s['tokens_trained']:,} tokens ({s['epochs']} epochs)
- AdamW lr {c['lr']} (warmup {c['warmup_steps']}, cosine to {c['min_lr_ratio']} x lr), betas (0.9, 0.95), weight decay {c['weight_decay']}, clip {c['grad_clip']}
- precision {s['precision']} on {s['device']} ({s['threads']} threads): {s['train_minutes']} min, {s['tokens_per_s']:,} tokens/s
- final train loss {s['final_train_loss']}, validation loss {s['final_val_loss']}
- seed {c['seed']}

{_knowledge_section(s.get("knowledge"))}

## Symptoms (measured at the end of the run)
- end token 50256 emitted: {sym['greedy_eos_emitted']} times in {len(sym['samples'])} x {sym['greedy_new_tokens']} greedy tokens, {sym['sampled_eos_emitted']} times sampled (temperature 1)
- mean probability of the end token over validation positions: {sym['mean_p_end_token']:.2e}
- mean share of repeated 4-grams in greedy continuations: {sym['mean_greedy_repeated_4gram_fraction']}

{samples}

## Rebuild
```
{rebuild}
```
`mambaft pretrain` restarts itself with `OMP_WAIT_POLICY=PASSIVE` and the glibc malloc tunables
(mambaft.runtime.LAUNCH_ENV) unless they are set. It saves an exact resume state every
{c.get('save_every', 200)} steps in `<out>.resume/`: a killed run started again with the same command goes
on where it stopped. Another machine gives slightly different numbers: threads and bf16 kernels change
the rounding.
"""
