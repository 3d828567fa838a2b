"""Small synthetic skill sets, for skills that no registry source teaches: sums of small numbers and
short lists. Generated here (no package), deterministic, labelled synthetic in stats.json and the card.

    skills_en   "What is 3+5?" -> "3 + 5 = 8."; "List three fruits." -> "Apple, pear and plum."
    skills_fr   the same in French ("Combien font 3+5 ?" -> "3 + 5 = 8.")

A reply restates the sum before its result ("3 + 5 = 8."), so the tokens the result is predicted
from sit right before it, inside the model's 19-token reach. The plan's probes and their paraphrases
are never generated (2 + 2 is skipped, colours are not a list category; mambaft.data.leaks filters
whatever slips through). Every item is one user turn and one answer of at least three words, or a sum.
"""
from __future__ import annotations

import random
from typing import Iterator

from mambaft.data.schema import make_conversation

SUM_MAX = 10          # operands 0..10: 121 sums, 120 without the probe's 2 + 2

SUM_PROMPTS = {
    "en": ("What is {a}+{b}?", "What is {a} + {b}?", "What is {a} plus {b}?", "How much is {a} + {b}?",
           "Calculate {a} + {b}.", "Add {a} and {b}."),
    "fr": ("Combien font {a}+{b} ?", "Combien font {a} + {b} ?", "Combien fait {a} plus {b} ?",
           "Calcule {a} + {b}.", "Additionne {a} et {b}."),
}

# category (plural, singular) -> members. Colours are left out: "List three colors" is a probe.
LISTS = {
    "en": {
        ("fruits", "fruit"): ("apple", "banana", "pear", "cherry", "grape", "mango", "peach", "plum",
                              "strawberry", "lemon"),
        ("animals", "animal"): ("dog", "cat", "horse", "cow", "lion", "tiger", "elephant", "rabbit",
                                "sheep", "bear"),
        ("vegetables", "vegetable"): ("carrot", "potato", "onion", "cabbage", "pea", "lettuce", "leek",
                                      "spinach"),
        ("planets", "planet"): ("Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus",
                                "Neptune"),
        ("musical instruments", "musical instrument"): ("piano", "guitar", "violin", "drum", "flute",
                                                        "trumpet", "cello"),
        ("sports", "sport"): ("football", "tennis", "basketball", "golf", "swimming", "cricket", "rugby"),
        ("drinks", "drink"): ("water", "milk", "tea", "coffee", "juice", "lemonade"),
        ("days of the week", "day of the week"): ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday",
                                                  "Saturday", "Sunday"),
        ("months", "month"): ("January", "March", "April", "May", "June", "July", "October", "December"),
        ("shapes", "shape"): ("circle", "square", "triangle", "rectangle", "oval", "hexagon"),
    },
    "fr": {
        ("fruits", "fruit"): ("pomme", "banane", "poire", "cerise", "raisin", "mangue", "pêche", "prune",
                              "fraise", "citron"),
        ("animaux", "animal"): ("chien", "chat", "cheval", "vache", "lion", "tigre", "éléphant", "lapin",
                                "mouton", "ours"),
        ("légumes", "légume"): ("carotte", "pomme de terre", "oignon", "chou", "poireau", "épinard"),
        ("planètes", "planète"): ("Mercure", "Vénus", "la Terre", "Mars", "Jupiter", "Saturne",
                                  "Uranus", "Neptune"),
        ("sports", "sport"): ("football", "tennis", "basket", "golf", "natation", "rugby"),
        ("jours de la semaine", "jour de la semaine"): ("lundi", "mardi", "mercredi", "jeudi",
                                                        "vendredi", "samedi", "dimanche"),
    },
}
LIST_PROMPTS = {
    "en": ("List three {p}.", "Name three {p}.", "Give me three {p}.", "Can you name three {p}?"),
    "fr": ("Cite trois {p}.", "Donne-moi trois {p}.", "Peux-tu citer trois {p} ?"),
}
# "Name a fruit." -> "Apple is a fruit." (English only: French needs each noun's gender)
ONE_PROMPTS = {"en": ("Name a {s}.", "Give me an example of a {s}."), "fr": ()}
AND = {"en": "and", "fr": "et"}
LISTS_PER_CATEGORY = 24       # seeded draws of three members per category (x prompts in rotation)


def _cap(word: str) -> str:
    return word[:1].upper() + word[1:]


def _sums(lang: str, source: str) -> Iterator[dict]:
    prompts = SUM_PROMPTS[lang]
    k = 0
    for a in range(SUM_MAX + 1):
        for b in range(SUM_MAX + 1):
            if (a, b) == (2, 2):          # the plan's arithmetic probe
                continue
            user = prompts[k % len(prompts)].format(a=a, b=b)
            k += 1
            yield make_conversation(f"{source}:sum:{a}+{b}", source, lang,
                                    [{"role": "user", "content": user},
                                     {"role": "assistant", "content": f"{a} + {b} = {a + b}."}])


def _lists(lang: str, source: str, rng: random.Random) -> Iterator[dict]:
    prompts, ones = LIST_PROMPTS[lang], ONE_PROMPTS[lang]
    for (plural, singular), members in LISTS[lang].items():
        for i in range(LISTS_PER_CATEGORY):
            x, y, z = rng.sample(members, 3)
            user = prompts[i % len(prompts)].format(p=plural)
            yield make_conversation(f"{source}:list:{plural}:{i}", source, lang,
                                    [{"role": "user", "content": user},
                                     {"role": "assistant", "content": f"{_cap(x)}, {y} {AND[lang]} {z}."}])
        for i, m in enumerate(members if ones else ()):
            user = ones[i % len(ones)].format(s=singular)
            answer = f"{_cap(m)} is a {singular}."
            yield make_conversation(f"{source}:one:{singular}:{i}", source, lang,
                                    [{"role": "user", "content": user}, {"role": "assistant", "content": answer}])


def skill_conversations(source: str, lang: str, seed: int = 0) -> Iterator[dict]:
    """Every conversation of the skill set in `lang`: the sums, then the lists (draws seeded)."""
    if lang not in SUM_PROMPTS:
        raise ValueError(f"skills: no skill set in language {lang!r} (have {', '.join(SUM_PROMPTS)})")
    yield from _sums(lang, source)
    yield from _lists(lang, source, random.Random(f"skills:{lang}:{seed}"))
