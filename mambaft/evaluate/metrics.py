"""Numbers for one model: perplexity (instruction answers, held-out plain text), degeneration,
the end token after a complete answer, and BLEU / chrF against validation answers.

Every function takes an evaluation LM (`mambaft.evaluate.lm`), so the same code scores a MambaSWELU
and the SmolLM2 reference. Perplexities also come as bits per byte (`bpb` = total NLL / ln 2 / UTF-8
bytes of the scored text): token perplexities of models with different tokenizers are not
comparable, bits per byte are.

    mambaft repetition "the cat sat on the mat the cat sat on the mat"   # rep/distinct
"""
from __future__ import annotations

import math
import re
import statistics
from collections import Counter, defaultdict
from typing import Iterable, Optional, Sequence

from tqdm.auto import tqdm

from ..template import IGNORE_INDEX
from .replies import STOP_END, STOP_LIMIT, STOP_STRING

LN2 = math.log(2.0)


# --- perplexity ------------------------------------------------------------------------------------
def _summary(nll: float, tokens: int, nbytes: int) -> dict:
    """Totals -> {ppl, nll (mean per token, nats), bpb, tokens, bytes}."""
    if tokens == 0:
        return {"ppl": float("nan"), "nll": float("nan"), "bpb": float("nan"), "tokens": 0, "bytes": nbytes}
    return {"ppl": math.exp(nll / tokens), "nll": nll / tokens,
            "bpb": nll / LN2 / nbytes if nbytes else float("nan"), "tokens": tokens, "bytes": nbytes}


def masked_nll(lm, rows: Sequence[tuple], sources: Optional[Sequence[str]] = None,
               progress: bool = False) -> dict:
    """Rows of (input_ids, labels) -> summed NLL on the positions whose label is not -100.

    labels are aligned with input_ids (the shift happens here: the token at i is predicted from
    ids[:i]); a label at position 0 has no context and is skipped. Returns {"all": summary,
    "by_source": {source: summary}} (see `_summary`)."""
    sources = list(sources) if sources is not None else ["all"] * len(rows)
    totals: dict = defaultdict(lambda: [0.0, 0, 0])
    batch = 64
    for start in tqdm(range(0, len(rows), batch), desc="perplexity", disable=not progress or len(rows) <= batch):
        chunk = rows[start:start + batch]
        lps = lm.token_logprobs([list(ids) for ids, _ in chunk])
        for (ids, labels), lp, src in zip(chunk, lps, sources[start:start + batch]):
            if len(ids) != len(labels):
                raise ValueError(f"row {start}: {len(ids)} input_ids but {len(labels)} labels")
            trained = [i for i in range(1, len(ids)) if labels[i] != IGNORE_INDEX]
            if not trained:
                continue
            for i in trained:
                if labels[i] != ids[i]:
                    raise ValueError(f"row {start}: labels[{i}]={labels[i]} differs from input_ids[{i}]="
                                     f"{ids[i]}: labels must be the ids themselves (shifted inside)")
            nll = -float(sum(lp[i - 1] for i in trained))
            # Bytes of the scored text, end token excluded (its marker is not answer text).
            nbytes = len(lm.decode([ids[i] for i in trained if ids[i] != lm.end_id]).encode("utf-8"))
            for key in (src, "__all__"):
                t = totals[key]
                t[0] += nll
                t[1] += len(trained)
                t[2] += nbytes
    allt = totals.pop("__all__", [0.0, 0, 0])
    return {"all": _summary(*allt), "by_source": {k: _summary(*v) for k, v in sorted(totals.items())}}


def instruction_perplexity(lm, dataset, limit: Optional[int] = None, progress: bool = False) -> dict:
    """Perplexity on the assistant tokens of a prepared split (columns input_ids + labels, or
    messages), per `source` column when there is one.

    A MambaSWELU scores the prepared `input_ids`/`labels` as they are; another model (the reference)
    re-renders each row's `messages` with its own chat template."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    cols = set(getattr(dataset, "column_names", None) or (dataset[0].keys() if n else []))
    use_prepared = lm.kind == "mambaswelu" and {"input_ids", "labels"} <= cols
    if not use_prepared and "messages" not in cols:
        raise ValueError(f"validation split has columns {sorted(cols)}: need input_ids + labels "
                         f"(mambaft models) or messages (other models)")
    rows, sources = [], []
    for i in range(n):
        ex = dataset[i]
        if use_prepared:
            ids, labels = list(ex["input_ids"]), list(ex["labels"])
        else:
            ids, labels = lm.render(ex["messages"])
        if len(ids) > lm.max_len:  # keep the end of the row: the trained answer is at the end
            ids, labels = ids[-lm.max_len:], labels[-lm.max_len:]
        rows.append((ids, labels))
        sources.append(ex.get("source", "all") if isinstance(ex, dict) else "all")
    out = masked_nll(lm, rows, sources, progress=progress)
    out["rows"] = n
    out["scored_from"] = "prepared input_ids/labels" if use_prepared else "messages rendered by the model's template"
    return out


# Held-out perplexity, THE definition (training's heldout_ppl and evaluation's text perplexity alike):
# exp(token-weighted mean NLL) over `text_windows`. For a model that sees 19 tokens, a window of 256
# changes nothing past position 19; for others it bounds context.
HELDOUT_WINDOW = 256


def text_windows(token_lists: Iterable[Sequence[int]], window: int = HELDOUT_WINDOW,
                 max_tokens: Optional[int] = None) -> list:
    """Documents' token ids -> the windows a held-out perplexity scores: each document cut on its own
    (no window spans two documents: predicting one text's start from another's end scores nothing
    the model could know) into non-overlapping windows of `window` tokens; every token but each
    window's first is scored. `max_tokens` caps the SCORED tokens (the last window is cut to fit)."""
    rows = []
    budget = max_tokens if max_tokens is not None else math.inf
    for ids in token_lists:
        ids = list(ids)
        for s in range(0, len(ids) - 1, window):
            piece = ids[s:s + window]
            if len(piece) < 2 or budget <= 0:
                continue
            if len(piece) - 1 > budget:
                piece = piece[:int(budget) + 1]
            budget -= len(piece) - 1
            rows.append(piece)
        if budget <= 0:
            break
    return rows


def text_perplexity(lm, texts: Iterable[str], window: int = HELDOUT_WINDOW, max_tokens: Optional[int] = None,
                    progress: bool = False) -> dict:
    """Held-out perplexity of plain texts (`text_windows` of each text, tokenized on its own, scored
    through `lm`). `max_tokens` caps the scored tokens (quick runs)."""
    windows = text_windows((lm.encode(t) for t in texts), min(window, lm.max_len), max_tokens)
    rows = [(piece, [IGNORE_INDEX] + piece[1:]) for piece in windows]
    out = masked_nll(lm, rows, progress=progress)["all"]
    out["windows"] = len(rows)
    return out


def heldout_perplexity(lm, names: Sequence[str] = ("wiki_en", "wiki_fr"), limit_docs: int = 50,
                       window: int = 256, max_tokens: Optional[int] = 20_000, progress: bool = False,
                       split: str = "heldout") -> dict:
    """Plain-text perplexity on the held-out slice of each text source (forgetting, EN and FR).
    `names`: keys of mambaft.data.text.TEXT_SOURCES or local .txt/.jsonl paths."""
    from ..data.text import load_text_documents

    out = {}
    for name in names:
        docs = load_text_documents(name, limit_docs, split=split, progress=progress)
        if not docs:
            raise ValueError(f"text source {name!r}: no documents in its {split!r} split")
        res = text_perplexity(lm, [d["text"] for d in docs], window, max_tokens, progress)
        res.update(docs=len(docs), lang=docs[0]["lang"], license=docs[0]["license"])
        out[str(name)] = res
    return out


# --- degeneration and reply quality ----------------------------------------------------------------
def _words(text: str) -> list:
    return text.lower().split()


def ngrams(tokens: Sequence, n: int) -> list:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngram_rate(text: str, n: int = 3) -> Optional[float]:
    """Share of the text's word n-grams that repeat an earlier n-gram of the same text:
    1 - distinct/total ("a b c a b c", n=3: 4 trigrams, 3 distinct -> 0.25). None if the text is
    too short to hold an n-gram: "too short to measure", never a perfect 0.0 (issue 23: "A." is no
    proof that a model does not loop)."""
    grams = ngrams(_words(text), n)
    return 1 - len(set(grams)) / len(grams) if grams else None


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams / all word n-grams over a set of replies (Li et al., 2016)."""
    grams = [g for t in texts for g in ngrams(_words(t), n)]
    return len(set(grams)) / len(grams) if grams else float("nan")


# Reply quality (issue 23): a model that answers "A." to every question stops and never loops, so stop
# rate and rep_3 alone call it a success. These say whether the replies differ and say something.
BARE_WORDS = 3      # a reply of fewer words is bare ("Paris." is 1 word, "It is Paris." is 3)
# A lone option letter, what a model that learned multiple-choice answers says to anything:
# "A", "A.", "b)", "(b)", "C:"
_OPTION_LETTER = re.compile(r"^\(?[a-z]\)?[.):]?$", re.IGNORECASE)
_WORD = re.compile(r"\w+")


def reply_words(text: str) -> list:
    """The words of a reply: whitespace-separated pieces holding a letter or digit ("A." is one word,
    "- -" none)."""
    return [w for w in text.split() if _WORD.search(w)]


def is_option_letter(text: str) -> bool:
    return bool(_OPTION_LETTER.match(text.strip()))


def is_bare(text: str) -> bool:
    """Fewer than BARE_WORDS words, or a lone option letter. An empty reply is bare, and so is every
    reply too short to hold a 3-gram (it has fewer than 3 whitespace pieces, so fewer than 3 words)."""
    return len(reply_words(text)) < BARE_WORDS or is_option_letter(text)


def normalise_reply(text: str) -> str:
    """What two replies must share to be the same reply: their lower-cased words, punctuation and
    spacing dropped ("A." = "a", "I don't know." = "i don t know")."""
    return " ".join(_WORD.findall(text.lower()))


def _hashable(p):
    return tuple(p) if isinstance(p, list) else p


def distinct_replies(prompts: Sequence, texts: Sequence[str]) -> float:
    """Distinct normalised replies / distinct prompts, at most 1 (sampled replies to a repeated prompt
    may differ: they cannot make up for another prompt's copy). A constant reply to n prompts: 1/n.
    NaN without replies."""
    if len(prompts) != len(texts):
        raise ValueError(f"{len(prompts)} prompts but {len(texts)} replies")
    if not texts:
        return float("nan")
    return min(1.0, len({normalise_reply(t) for t in texts}) / len(set(map(_hashable, prompts))))


def useful_replies(prompts: Sequence, texts: Sequence[str], stopped: Sequence[bool]) -> float:
    """Distinct normalised replies among those that stopped and are not bare, over distinct prompts (at
    most 1): the share of prompts that got a reply of their own. A constant reply scores at most 1/n;
    replies that all differ, stop and say 3 words or more score 1. NaN without replies."""
    if not texts:
        return float("nan")
    kept = {normalise_reply(t) for t, s in zip(texts, stopped) if s and not is_bare(t)}
    return min(1.0, len(kept) / len(set(map(_hashable, prompts))))


def reply_quality(prompts: Sequence, texts: Sequence[str], stopped: Sequence[bool]) -> dict:
    """Whether replies differ and say something (the text a user sees, one per prompt):
        distinct_replies  distinct normalised replies / distinct prompts
        bare_rate         share of replies with fewer than 3 words, or a lone option letter
        mean_words        words per reply
        too_short_3       share of replies too short to hold a 3-gram (unmeasured by rep_3, and bare)
        useful_replies    distinct replies that stopped and are not bare / distinct prompts
    `prompts` identifies each reply's prompt (ids or text), `stopped`: ended before the token limit."""
    n = len(texts)
    nan = float("nan")
    return {"prompts": len(set(map(_hashable, prompts))),
            "distinct_replies": distinct_replies(prompts, texts),
            "bare_rate": sum(map(is_bare, texts)) / n if n else nan,
            "mean_words": statistics.fmean(len(reply_words(t)) for t in texts) if n else nan,
            "too_short_3": sum(repeated_ngram_rate(t, 3) is None for t in texts) / n if n else nan,
            "useful_replies": useful_replies(prompts, texts, stopped)}


def degeneration(replies: Sequence) -> dict:
    """Loops, stopping and reply quality over a set of `EvalReply`, judged on the answer a user sees:
    mean repeated n-gram rate (n = 2, 3, 4, over the replies long enough to hold such n-grams; NaN
    when none is), distinct-1/2, how replies ended (end token / next-turn marker / token limit), and
    `reply_quality` (distinct and bare replies, words per reply)."""
    texts = [r.answer for r in replies]
    out: dict = {"replies": len(replies)}
    for n in (2, 3, 4):
        rates = [x for x in (repeated_ngram_rate(t, n) for t in texts) if x is not None]
        out[f"rep_{n}"] = statistics.fmean(rates) if rates else float("nan")
    out["distinct_1"] = distinct_n(texts, 1)
    out["distinct_2"] = distinct_n(texts, 2)
    ends = Counter(r.stopped_by for r in replies)
    total = max(1, len(replies))
    out["limit_rate"] = ends[STOP_LIMIT] / total          # ran to max_new_tokens without stopping
    out["end_token_rate"] = ends[STOP_END] / total
    out["stop_string_rate"] = ends[STOP_STRING] / total
    out["mean_new_tokens"] = statistics.fmean(r.n_new for r in replies) if replies else float("nan")
    out.update(reply_quality([tuple(r.prompt_ids) for r in replies], texts, [not r.hit_limit for r in replies]))
    return out


# --- the end token after a complete answer ---------------------------------------------------------
# (history, complete answer) pairs: after these answers the right next token is the end token.
COMPLETE_ANSWERS = [
    ([{"role": "user", "content": "What is the capital of France?"}], "The capital of France is Paris."),
    ([{"role": "user", "content": "What is 2+2?"}], "2+2 equals 4."),
    ([{"role": "user", "content": "Say hello."}], "Hello! How can I help you today?"),
    ([{"role": "user", "content": "Name a primary colour."}], "Red is a primary colour."),
    ([{"role": "user", "content": "Quelle est la capitale de la France ?"}], "La capitale de la France est Paris."),
    ([{"role": "user", "content": "Dis bonjour."}], "Bonjour ! Comment puis-je vous aider ?"),
]


def end_token_probability(lm, pairs: Sequence[tuple] = COMPLETE_ANSWERS) -> dict:
    """p(end token | history + complete answer), rendered by the model's own template. The end
    token's position is the last trained end token of the rendering (user text never encodes to
    it: only the template inserts it)."""
    rows, ends = [], []
    for history, answer in pairs:
        ids, labels = lm.render(list(history) + [{"role": "assistant", "content": answer}])
        pos = [i for i, (t, l) in enumerate(zip(ids, labels)) if t == lm.end_id and l != IGNORE_INDEX]
        if not pos:
            raise ValueError(f"the template of {lm.name} put no trained end token after the answer")
        rows.append(ids[:pos[-1] + 1])
        ends.append(pos[-1])
    probs = [math.exp(float(lp[e - 1])) for lp, e in zip(lm.token_logprobs(rows), ends)]
    return {"mean": statistics.fmean(probs), "median": statistics.median(probs),
            "min": min(probs), "max": max(probs), "above_half": sum(p > 0.5 for p in probs) / len(probs),
            "per_pair": probs, "end_id": lm.end_id}


# --- BLEU / chrF -----------------------------------------------------------------------------------
def reference_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """Corpus BLEU and chrF (sacrebleu, default settings; 0-100) of answers against references."""
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} answers but {len(references)} references")
    if not hypotheses:
        return {"bleu": float("nan"), "chrf": float("nan"), "n": 0}
    bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
    b = bleu.corpus_score(list(hypotheses), [list(references)])
    c = chrf.corpus_score(list(hypotheses), [list(references)])
    return {"bleu": b.score, "chrf": c.score, "n": len(hypotheses),
            "signature": f"{bleu.get_signature()} | {chrf.get_signature()}"}


def validation_pairs(dataset, limit: Optional[int] = None) -> list:
    """(history, reference answer) from each validation conversation: the history up to its last
    assistant turn, and that turn's text."""
    out = []
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(n):
        msgs = list(dataset[i]["messages"])
        last = max((j for j, m in enumerate(msgs) if m["role"] == "assistant"), default=-1)
        if last <= 0 or msgs[last - 1]["role"] != "user":
            continue
        out.append((msgs[:last], msgs[last]["content"]))
    return out


def answer_scores(lm, pairs: Sequence[tuple], max_new_tokens: int = 64, seed: int = 0,
                  progress: bool = False) -> tuple:
    """Generate an answer for every (history, reference) -> (BLEU/chrF dict, replies)."""
    replies = lm.replies([h for h, _ in pairs], max_new_tokens=max_new_tokens, seed=seed, progress=progress)
    scores = reference_scores([r.answer for r in replies], [ref for _, ref in pairs])
    return scores, replies
