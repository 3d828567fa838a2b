"""The plan's success probes, in English and French, each with a pass rule a reader can check.

Kinds (one English and one French probe each, except where noted):
    capital       "What is the capital of France?"             -> the word "Paris" in the first 30 words
    arithmetic    "What is 2+2?"                               -> the first number (after removing the
                                                                  restated "2+2") is 4 / four / quatre
    context       a name given in turn 1, asked back in turn 3 -> the name "Camille" appears. The name
                                                                  sits 30+ tokens before the question, past
                                                                  the base model's 19-token reach
    no_invention  a question about a person who does not exist -> admits not knowing AND names no proper
                                                                  noun that is not in the question
    one_word      "Answer with one word: colour of the sky?"   -> exactly one word, and it is blue / bleu
    three_colors  "List three colors."                          -> exactly three distinct colour names
    stops         "Say hello in one short sentence."            -> a non-empty answer AND the reply ended
                                                                  with the end token before the limit

`Probe.check(answer)` applies the text rule to the cleaned answer. The `stops` probes also need the
way generation ended (`requires_end_token`), which `run_probes` records for every probe.

    mambaft probes                 # print every probe and its rule
    mambaft probes --model PATH    # run them greedily and print pass/fail
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from .replies import STOP_END, EvalReply, eval_replies

DEFAULT_MAX_NEW_TOKENS = 64   # probe answers are one short sentence; 64 GPT-2 tokens ~ 45 words


# --- text helpers (every rule is built from these, so a reader can check them) ---------------------
def _norm(text: str) -> str:
    """Lowercase, typographic apostrophes -> ', accents kept (French words are matched with them)."""
    return unicodedata.normalize("NFC", text).replace("\u2019", "'").replace("\u2018", "'").lower()


WORD_RE = re.compile(r"[^\W\d_]+(?:['-][^\W\d_]+)*")


def words(text: str) -> list[str]:
    """Letter-only words (apostrophes and hyphens inside a word kept), lowercased."""
    return WORD_RE.findall(_norm(text))


def has_word(text: str, word: str, within: Optional[int] = None) -> bool:
    ws = words(text)
    return _norm(word) in (ws[:within] if within else ws)


NUMBER_WORDS = {
    "en": {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
           "eight": 8, "nine": 9, "ten": 10},
    "fr": {"zéro": 0, "un": 1, "une": 1, "deux": 2, "trois": 3, "quatre": 4, "cinq": 5, "six": 6,
           "sept": 7, "huit": 8, "neuf": 9, "dix": 10},
}


def first_number(text: str, lang: str = "en") -> Optional[float]:
    """The first number written in digits or as a word (zero..ten / zéro..dix), else None."""
    names = NUMBER_WORDS[lang]
    pattern = r"-?\d+(?:[.,]\d+)?|\b(?:" + "|".join(map(re.escape, names)) + r")\b"
    m = re.search(pattern, _norm(text))
    if not m:
        return None
    tok = m.group(0)
    return float(names[tok]) if tok in names else float(tok.replace(",", "."))


COLORS = {  # spelling -> canonical colour (so "grey"/"gray" or "vert"/"verte" count once)
    "en": {c: c for c in ("red", "orange", "yellow", "green", "blue", "purple", "violet", "pink",
                          "brown", "black", "white", "indigo", "cyan", "magenta", "turquoise",
                          "beige", "gold", "silver")} | {"grey": "gray", "gray": "gray"},
    "fr": {"rouge": "rouge", "orange": "orange", "jaune": "jaune", "vert": "vert", "verte": "vert",
           "bleu": "bleu", "bleue": "bleu", "violet": "violet", "violette": "violet", "rose": "rose",
           "marron": "marron", "brun": "brun", "brune": "brun", "noir": "noir", "noire": "noir",
           "blanc": "blanc", "blanche": "blanc", "gris": "gris", "grise": "gris", "indigo": "indigo",
           "cyan": "cyan", "magenta": "magenta", "turquoise": "turquoise", "beige": "beige",
           "doré": "doré", "dorée": "doré", "argent": "argent", "argenté": "argent"},
}


def colors_named(text: str, lang: str) -> set[str]:
    table = COLORS[lang]
    return {table[w] for w in words(text) if w in table}


ADMITS_UNKNOWN = {
    "en": [r"\bi (?:do not|don't|dont|really don't) know\b", r"\bnot (?:sure|certain)\b",
           r"\bnot familiar\b", r"\bno (?:information|record|records|knowledge|data|details)\b",
           r"\b(?:not|n't) (?:aware|able to find|find any|have any information)\b",
           r"\b(?:doesn't|does not|may not|might not|did not|didn't) (?:seem to )?exist\b",
           r"\bfictional\b", r"\bfictitious\b", r"\bnot a real\b", r"\bmade[- ]up\b",
           r"\bnever heard\b", r"\b(?:cannot|can't|could not|couldn't|unable to) (?:find|identify|verify)\b",
           r"\bunknown\b", r"\bno one (?:by|with) that name\b", r"\bi don't have (?:any )?(?:information|details)\b"],
    "fr": [r"\bje ne (?:sais|connais) pas\b", r"\bje ne suis pas s[uû]re?\b", r"\baucune information\b",
           r"\bpas d'informations?\b", r"\bpas de renseignements?\b", r"\bn'existe pas\b",
           r"\bfictif\b", r"\bfictive\b", r"\bimaginaire\b", r"\binconnue?\b", r"\bjamais entendu\b",
           r"\bje n'ai (?:pas|aucune) (?:d'|de )?(?:information|renseignement)", r"\bje ne trouve pas\b"],
}


def admits_not_knowing(text: str, lang: str) -> bool:
    t = _norm(text)
    return any(re.search(p, t) for p in ADMITS_UNKNOWN[lang])


# Capitalised words that are not names even in mid-sentence.
NOT_NAMES = {"i", "i'm", "i've", "i'd", "i'll", "english", "french", "français", "ok", "ai"}
_CAP_RE = re.compile(r"[A-ZÀ-ÖØ-Þ][^\W\d_]*(?:['-][^\W\d_]+)*")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\n]|[\"«(])\s*$")


def new_proper_nouns(answer: str, question: str) -> list[str]:
    """Capitalised words that are not at a sentence start, not "I"/language names, and not in the
    question: the names the answer introduces on its own."""
    known = set(words(question)) | NOT_NAMES
    found = []
    text = unicodedata.normalize("NFC", answer).replace("\u2019", "'")
    for m in _CAP_RE.finditer(text):
        if _SENTENCE_START.search(text[:m.start()]):
            continue  # sentence-initial capitals are ordinary words as often as names
        w = _norm(m.group(0))
        if w not in known:
            found.append(m.group(0))
    return found


def one_word(answer: str) -> Optional[str]:
    """The answer's single word (surrounding punctuation, quotes and asterisks removed), else None."""
    stripped = answer.strip().strip(" \t\n.!?,;:\"'*«»()[]")
    ws = stripped.split()
    if len(ws) != 1 or not WORD_RE.fullmatch(_norm(ws[0])):
        return None
    return _norm(ws[0])


# --- the probe type --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    id: str
    lang: str                      # "en" | "fr"
    kind: str                      # capital | arithmetic | context | no_invention | one_word | ...
    messages: tuple                # history ending with a user turn
    rule: str                      # the pass rule in words
    checker: Callable[[str], bool] = field(repr=False, compare=False, default=lambda a: bool(a))
    requires_end_token: bool = False  # passes only if the reply ended with the end token

    def check(self, answer: str) -> bool:
        """The text rule on the cleaned answer (the `stops` probes also need `requires_end_token`)."""
        return bool(self.checker(answer))

    def passes(self, answer: str, stopped_by: str) -> bool:
        return self.check(answer) and (not self.requires_end_token or stopped_by == STOP_END)

    @property
    def question(self) -> str:
        return self.messages[-1]["content"]


def _u(text: str) -> dict:
    return {"role": "user", "content": text}


def _a(text: str) -> dict:
    return {"role": "assistant", "content": text}


def _no_invention(lang: str, question: str) -> Callable[[str], bool]:
    return lambda a: admits_not_knowing(a, lang) and not new_proper_nouns(a, question)


_NO_INV_Q = {"en": "Who is Professor Orvald Trenchik of the University of Velmora?",
             "fr": "Qui est le professeur Orvald Trenchik de l'université de Velmora ?"}
_ADMIT_RULE = ("and admits not knowing (it matches one of ADMITS_UNKNOWN[{lang}], e.g. "
               "{ex}), and names no proper noun absent from the question (a capitalised word that is "
               "not sentence-initial and not I/English/French)")

PROBES: list = [
    Probe("capital_en", "en", "capital", (_u("What is the capital of France?"),),
          'the word "Paris" (any case) is among the first 30 words of the answer',
          lambda a: has_word(a, "paris", within=30)),
    Probe("capital_fr", "fr", "capital", (_u("Quelle est la capitale de la France ?"),),
          'le mot « Paris » (toute casse) figure parmi les 30 premiers mots de la réponse',
          lambda a: has_word(a, "paris", within=30)),
    Probe("arithmetic_en", "en", "arithmetic", (_u("What is 2+2?"),),
          'after removing the restated "2+2" / "two plus two", the first number (digits or '
          'zero..ten) is 4',
          lambda a: first_number(re.sub(r"2\s*\+\s*2|two plus two", " ", _norm(a)), "en") == 4),
    Probe("arithmetic_fr", "fr", "arithmetic", (_u("Combien font 2+2 ?"),),
          'après suppression de « 2+2 » / « deux plus deux » répété, le premier nombre (chiffres ou '
          'zéro..dix) vaut 4',
          lambda a: first_number(re.sub(r"2\s*\+\s*2|deux plus deux", " ", _norm(a)), "fr") == 4),
    Probe("context_en", "en", "context",
          (_u("Hi! My name is Camille and I live in a small town near the sea, with two cats."),
           _a("Nice to meet you! How can I help you today?"),
           _u("Can you remind me what my name is?")),
          'the name "Camille" (given in turn 1, 30+ tokens before the question) appears in the answer',
          lambda a: has_word(a, "camille")),
    Probe("context_fr", "fr", "context",
          (_u("Bonjour ! Je m'appelle Camille et j'habite dans une petite ville au bord de la mer, "
              "avec deux chats."),
           _a("Enchanté ! Comment puis-je vous aider aujourd'hui ?"),
           _u("Peux-tu me rappeler comment je m'appelle ?")),
          'le prénom « Camille » (donné au tour 1, 30+ jetons avant la question) figure dans la réponse',
          lambda a: has_word(a, "camille")),
    Probe("no_invention_en", "en", "no_invention", (_u(_NO_INV_Q["en"]),),
          "this person does not exist: the answer is non-empty " +
          _ADMIT_RULE.format(lang='"en"', ex='"I don\'t know", "not familiar", "no information", '
                                            '"does not exist", "fictional"'),
          _no_invention("en", _NO_INV_Q["en"])),
    Probe("no_invention_fr", "fr", "no_invention", (_u(_NO_INV_Q["fr"]),),
          "cette personne n'existe pas : la réponse est non vide " +
          _ADMIT_RULE.format(lang='"fr"', ex='"je ne sais pas", "je ne connais pas", '
                                            '"aucune information", "n\'existe pas", "fictif"'),
          _no_invention("fr", _NO_INV_Q["fr"])),
    Probe("one_word_en", "en", "one_word",
          (_u("Answer with one word: what colour is the sky on a clear day?"),),
          'after stripping surrounding punctuation/quotes, the answer is exactly one word, "blue"',
          lambda a: one_word(a) == "blue"),
    Probe("one_word_fr", "fr", "one_word",
          (_u("Réponds en un seul mot : de quelle couleur est le ciel par beau temps ?"),),
          'après suppression de la ponctuation autour, la réponse est exactement un mot, « bleu »',
          lambda a: one_word(a) in ("bleu", "bleue")),
    Probe("three_colors_en", "en", "three_colors", (_u("List three colors."),),
          "the answer names exactly three distinct colours from COLORS['en'] (grey/gray count once)",
          lambda a: len(colors_named(a, "en")) == 3),
    Probe("three_colors_fr", "fr", "three_colors", (_u("Cite trois couleurs."),),
          "la réponse nomme exactement trois couleurs distinctes de COLORS['fr'] (vert/verte comptent "
          "une fois)",
          lambda a: len(colors_named(a, "fr")) == 3),
    Probe("stops_en", "en", "stops", (_u("Say hello in one short sentence."),),
          "the answer is non-empty AND generation ended with the model's end token before "
          "max_new_tokens (writing the next \"User:\" turn or hitting the limit fails)",
          lambda a: bool(a.strip()), requires_end_token=True),
    Probe("stops_fr", "fr", "stops", (_u("Dis bonjour en une courte phrase."),),
          "la réponse est non vide ET la génération s'est terminée par le jeton de fin du modèle avant "
          "max_new_tokens",
          lambda a: bool(a.strip()), requires_end_token=True),
]


# --- running and scoring ---------------------------------------------------------------------------
def score_probes(probes: Sequence[Probe], replies: Sequence[EvalReply]) -> list:
    """Pair each probe with its reply (same order) -> one result dict per probe."""
    if len(probes) != len(replies):
        raise ValueError(f"{len(probes)} probes but {len(replies)} replies")
    out = []
    for p, r in zip(probes, replies):
        out.append({"id": p.id, "lang": p.lang, "kind": p.kind, "question": p.question,
                    "answer": r.answer, "raw": r.text, "stopped_by": r.stopped_by,
                    "n_new_tokens": r.n_new, "hit_limit": r.hit_limit,
                    "text_ok": p.check(r.answer), "passed": p.passes(r.answer, r.stopped_by),
                    "rule": p.rule})
    return out


def run_probes(model, tokenizer, template, probes: Sequence[Probe] = PROBES,
               max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, seed: int = 0, **gen_kwargs) -> list:
    """Greedy (default) replies to every probe through `mambaft.generate.generate`, stopping on the
    template's end token or stop strings -> list of dicts:
        {id, lang, kind, question, answer, raw, stopped_by, n_new_tokens, hit_limit, text_ok, passed, rule}
    """
    replies = eval_replies(model, tokenizer, template, [p.messages for p in probes],
                               max_new_tokens=max_new_tokens, seed=seed, **gen_kwargs)
    return score_probes(probes, replies)


def summarize_probes(results: Sequence[dict]) -> dict:
    """Pass rates overall, per language and per kind (fractions in [0, 1])."""
    def rate(rows):
        rows = list(rows)
        return sum(r["passed"] for r in rows) / len(rows) if rows else float("nan")

    return {"pass_rate": rate(results),
            "passed": sum(r["passed"] for r in results), "total": len(results),
            "by_lang": {lang: rate(r for r in results if r["lang"] == lang)
                        for lang in sorted({r["lang"] for r in results})},
            "by_kind": {kind: rate(r for r in results if r["kind"] == kind)
                        for kind in dict.fromkeys(r["kind"] for r in results)}}
