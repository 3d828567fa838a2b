"""Diagnosis of a base model: what it can see, what is dead, whether it stops, which symptoms it shows,
and a plain-language verdict on what instruction tuning can and cannot fix.

Measured, not read from the config:
    receptive field   change the token k positions before the last one (k = 1..40) and see whether
                      the last position's next-token logits move; the reach is 1 + the largest k
                      that moves them (the as-trained 6-layer model: 1 + 6 x 3 = 19 tokens)
    dead parameters   x_proj / dt_proj, in the state dict but never used by forward (model_facts)
    end token         p(<|endoftext|>) right after complete answers; share of replies that run
                      to the token limit
    symptoms          fixed prompts (EN + FR): loops, off-topic answers, invented names

    mambaft diagnose --model PATH [--out DIR]
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .lm import load_lm
from .metrics import degeneration, end_token_probability, repeated_ngram_rate
from .probes import new_proper_nouns, words

MAX_K = 40
REL_TOL = 1e-12  # in float64, a change below 1e-12 x max|logit| is rounding noise (eps = 2.2e-16)


@torch.no_grad()
def _last_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """ids [B, L] -> float64 logits of the last position [B, V] (no [B, L, V] tensor if avoidable)."""
    if hasattr(model, "features") and hasattr(model, "lm_head"):
        return model.lm_head(model.features(ids)[:, -1]).double()
    return model(ids)["logits"][:, -1].double()


@torch.no_grad()
def measure_receptive_field(model, max_k: int = MAX_K, trials: int = 3, seed: int = 0,
                            rel_tol: float = REL_TOL) -> dict:
    """How far back a token still moves the next-token logits.

    For `trials` random sequences of length L = max_k + 8 (capped by max_seq_len), the token at
    position L-1-k is replaced by another random token, for every k = 1..max_k, and the last
    position's logits are compared with the unchanged sequence's. The model runs in float64 (on a
    copy): the path to the farthest token goes through the outermost tap of every block's
    convolution, and in a freshly initialised 6-layer model its effect (~1e-8 of the logits) is
    below float32 resolution. Returns
        {"receptive_field": 1 + largest k that moved the logits, "moved": [k...],
         "max_k": max_k, "saturated": every k moved (the reach is at least max_k + 1),
         "rel_change": [largest relative change per k]}"""
    import copy

    cfg = model.config
    L = min(int(cfg.max_seq_len), max_k + 8)
    max_k = min(max_k, L - 1)
    V = int(cfg.vocab_size)
    dev = model.token_embedding.weight.device
    g = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(model).double().eval()   # 124M params: 1 GB in float64, freed on return
    rel = torch.zeros(max_k, dtype=torch.float64)
    for _ in range(trials):
        base = torch.randint(0, V, (L,), generator=g)
        rows = base.repeat(max_k + 1, 1)                         # row 0 unchanged, row k: token L-1-k changed
        shift = torch.randint(1, V, (max_k,), generator=g)
        for k in range(1, max_k + 1):
            rows[k, L - 1 - k] = (base[L - 1 - k] + shift[k - 1]) % V
        logits = torch.cat([_last_logits(model, rows[s:s + 16].to(dev)).cpu()
                            for s in range(0, max_k + 1, 16)])       # [max_k+1, V]
        scale = logits[0].abs().max().clamp_min(1e-300)
        change = (logits[1:] - logits[0]).abs().amax(dim=-1) / scale  # [max_k]
        rel = torch.maximum(rel, change)
    moved = [k for k in range(1, max_k + 1) if rel[k - 1] > rel_tol]
    return {"receptive_field": 1 + (max(moved) if moved else 0), "moved": moved, "max_k": max_k,
            "saturated": len(moved) == max_k, "rel_change": [float(x) for x in rel],
            "contiguous": moved == list(range(1, len(moved) + 1))}


@dataclass(frozen=True)
class SymptomPrompt:
    id: str
    lang: str
    question: str
    topic: tuple      # word stems: a reply using none of them (nor the question's long words) is off-topic


SYMPTOM_PROMPTS = [
    SymptomPrompt("capital_en", "en", "What is the capital of France?", ("paris", "capital", "france", "french", "city")),
    SymptomPrompt("photosynthesis_en", "en", "Explain what photosynthesis is.",
                  ("photosynth", "plant", "light", "sun", "energy", "leaf", "leaves", "chlorophyll", "sugar", "oxygen")),
    SymptomPrompt("romeo_en", "en", "Who wrote Romeo and Juliet?", ("shakespeare", "romeo", "juliet", "play", "wrote", "writer")),
    SymptomPrompt("pancakes_en", "en", "Give me a simple recipe for pancakes.",
                  ("pancake", "flour", "egg", "milk", "butter", "pan", "mix", "batter", "recipe", "sugar")),
    SymptomPrompt("unknown_person_en", "en", "Who is Professor Orvald Trenchik of the University of Velmora?",
                  ("orvald", "trenchik", "velmora", "professor", "know", "information", "exist")),
    SymptomPrompt("capital_fr", "fr", "Quelle est la capitale de la France ?", ("paris", "capitale", "france", "ville")),
    SymptomPrompt("photosynthesis_fr", "fr", "Qu'est-ce que la photosynthèse ?",
                  ("photosynth", "plante", "lumière", "soleil", "énergie", "feuille", "chlorophylle", "sucre", "oxygène")),
    SymptomPrompt("unknown_person_fr", "fr", "Qui est le professeur Orvald Trenchik de l'université de Velmora ?",
                  ("orvald", "trenchik", "velmora", "professeur", "connais", "sais", "information", "existe")),
]

LOOP_REP3 = 0.2   # a reply whose word trigrams repeat earlier ones 20 % of the time is looping


def symptoms(lm, prompts: Sequence[SymptomPrompt] = SYMPTOM_PROMPTS, max_new_tokens: int = 64,
             seed: int = 0) -> dict:
    """Greedy replies to fixed prompts, each checked for the plan's symptoms:
        loop          repeated word-trigram rate >= LOOP_REP3
        off_topic     no reply word starts with a topic stem or equals a 4+-letter question word
        invented      names a proper noun that is not in the question (probes.new_proper_nouns)
        no_stop       ran to max_new_tokens without the end token or the next-turn marker"""
    replies = lm.replies([[{"role": "user", "content": p.question}] for p in prompts],
                         max_new_tokens=max_new_tokens, seed=seed)
    rows = []
    for p, r in zip(prompts, replies):
        ws = words(r.answer)
        q_words = {w for w in words(p.question) if len(w) >= 4}
        on_topic = any(w in q_words or any(w.startswith(s) for s in p.topic) for w in ws)
        rep3 = repeated_ngram_rate(r.text, 3)
        rows.append({"id": p.id, "lang": p.lang, "question": p.question, "answer": r.answer,
                     "stopped_by": r.stopped_by, "n_new_tokens": r.n_new,
                     "rep_3": rep3, "loop": bool(rep3 is not None and rep3 >= LOOP_REP3),
                     "off_topic": not on_topic, "invented_names": new_proper_nouns(r.answer, p.question),
                     "no_stop": r.hit_limit})
    n = len(rows)
    rates = {k: sum(bool(x[k]) for x in rows) / n for k in ("loop", "off_topic", "invented_names", "no_stop")}
    return {"replies": rows, "rates": rates, "degeneration": degeneration(replies)}


def verdict(rf: dict, facts: dict, end: dict, sym: dict, architecture: str = "original") -> str:
    """A plain-language verdict built from the measured numbers."""
    R = rf["receptive_field"]
    words_seen = max(1, round(R * 0.75))  # GPT-2 English: about 0.75 words per token
    lines = []
    if rf["saturated"]:
        lines.append(f"Reach: changing any of the last {rf['max_k']} tokens moves the next-token "
                     f"prediction, so this model sees at least {R} tokens ({architecture} architecture). "
                     "Its context is limited by what it was trained on, not by its wiring.")
    else:
        lines.append(f"Reach: the next-token prediction depends on the last {R} tokens only (measured: a "
                     f"token {R} or more positions back never moves it). That is about {words_seen} English "
                     f"words, template markers included (\"User:\" and \"Assistant:\" take 4 of them).")
    dead = facts.get("dead_parameters")
    if dead is not None:
        lines.append(f"Dead weights: {dead:,} parameters ({100 * facts.get('dead_fraction', 0):.1f} %) sit in "
                     "x_proj/dt_proj, which the forward pass never uses; they never trained and fine-tuning "
                     "cannot use them either (freeze_dead() leaves them out).")
    lines.append(f"Stopping: after a complete answer the end token gets probability {end['mean']:.2g} on "
                 f"average (a model that learned to stop gives > 0.5); {100 * sym['rates']['no_stop']:.0f} % of "
                 f"the fixed prompts ran to the token limit.")
    r = sym["rates"]
    lines.append(f"Symptoms on {len(sym['replies'])} fixed prompts: loops {100 * r['loop']:.0f} %, off-topic "
                 f"{100 * r['off_topic']:.0f} %, invented names {100 * r['invented_names']:.0f} %.")
    if not rf["saturated"]:
        lines += [
            "",
            "What instruction tuning CAN fix: the answer format (answer after \"Assistant:\", then stop), "
            "emitting the end token (it is trained on every answer), fewer loops and less rambling, short "
            f"factual answers to questions that fit in {R} tokens (\"What is the capital of France?\" is 8), "
            "and a polite chat register.",
            f"What it CANNOT fix: anything that needs more than {R} tokens of context. The start of a "
            f"question longer than about {words_seen} words is invisible when the answer begins; a name or "
            "a fact from an earlier turn is forgotten; an instruction followed by a long text is lost; "
            f"after {R} tokens of its own answer the model no longer sees the question, so long answers "
            "drift off topic. No data or training length changes this: no weight carries information "
            f"further than {R} tokens (a width-4 causal convolution per block, no recurrence, no attention).",
            "The repair is architectural: fine-tune with architecture=\"selective\" "
            "(make_config(..., architecture=\"selective\")), which adds a real selective-scan state to every "
            "block, starting as an exact copy of this model, so training can open a long-range path.",
        ]
    return "\n".join(lines)


def diagnose(path_or_model, max_new_tokens: int = 64, seed: int = 0, max_k: int = MAX_K,
             trials: int = 3) -> dict:
    """Library call behind `mambaft diagnose`: a checkpoint path or an evaluation LM -> dict with
    receptive_field, facts, end_token, symptoms and verdict (text)."""
    lm = load_lm(path_or_model)
    model = lm.model
    rf = measure_receptive_field(model, max_k=max_k, trials=trials, seed=seed)
    facts: dict = {}
    if hasattr(model, "dead_parameters"):
        from ..model import model_facts
        facts = model_facts(model)
    end = end_token_probability(lm)
    sym = symptoms(lm, max_new_tokens=max_new_tokens, seed=seed)
    arch = getattr(model.config, "architecture", "original")
    return {"model": lm.describe(), "receptive_field": rf, "facts": facts, "end_token": end,
            "symptoms": sym, "verdict": verdict(rf, facts, end, sym, arch),
            "settings": {"max_new_tokens": max_new_tokens, "seed": seed, "max_k": max_k, "trials": trials,
                         "rel_tol": REL_TOL, "loop_rep3": LOOP_REP3}}


def to_markdown(d: dict) -> str:
    rf = d["receptive_field"]
    lines = [f"# Diagnosis: {d['model']['name']}", "", "## Verdict", "", d["verdict"], "",
             "## Measured receptive field", "",
             f"Largest k (1..{rf['max_k']}) whose change moves the last logits: "
             f"{max(rf['moved']) if rf['moved'] else 0} -> receptive field {rf['receptive_field']} tokens"
             f"{' (saturated: at least this many)' if rf['saturated'] else ''}.", "",
             "| k | relative logit change |", "|---|---|"]
    lines += [f"| {k} | {c:.2e} |" for k, c in enumerate(rf["rel_change"], start=1)]
    if d["facts"]:
        lines += ["", "## Parameters", "", "| part | parameters |", "|---|---|"]
        lines += [f"| {k} | {v:,} |" for k, v in d["facts"]["parameters_by_part"].items()]
        lines += [f"| **dead** | {d['facts']['dead_parameters']:,} |"]
    e = d["end_token"]
    lines += ["", "## End token", "", f"p(end | complete answer): mean {e['mean']:.3g}, median {e['median']:.3g}, "
              f"max {e['max']:.3g}.", "", "## Symptoms on fixed prompts", "",
              "| prompt | answer | loop | off-topic | invented names | stopped by |", "|---|---|---|---|---|---|"]
    for r in d["symptoms"]["replies"]:
        ans = r["answer"].replace("|", "\\|").replace("\n", " ")[:160]
        lines.append(f"| {r['question']} | {ans} | {'yes' if r['loop'] else ''} | {'yes' if r['off_topic'] else ''} "
                     f"| {', '.join(r['invented_names'])} | {r['stopped_by']} |")
    return "\n".join(lines) + "\n"


def write_report(d: dict, out: Path) -> list:
    out.mkdir(parents=True, exist_ok=True)
    (out / "diagnosis.json").write_text(json.dumps(d, indent=2, default=str) + "\n", encoding="utf-8")
    (out / "diagnosis.md").write_text(to_markdown(d), encoding="utf-8")
    return [out / "diagnosis.json", out / "diagnosis.md"]
