"""The bounds a fine-tuned model must meet, and the verdict they give: ONE place for the numbers that
notebook 04 states its verdict from and `mambaft ranges` marks runs with (issue 23).

A run meets the bounds when, on the TEST split's replies (held-out validation questions that chose
nothing: `mambaft.data.heldout`):
    it stops         stop rate          >= 0.9   (replies that ended before the token limit)
    it does not loop rep_3              <= 0.1   (mean repeated-3-gram rate; unmeasured fails)
    replies differ   distinct replies   >= 0.8   (distinct normalised replies / distinct prompts)
    replies say sth  bare replies       <= 0.1   (fewer than 3 words, or a lone option letter)
and on the probes:
    probes passed    pass rate           > the base's
A model that answers "A." to everything stops (1.0) and never loops, but has distinct replies 1/n
and bare replies 1.0: it fails two bounds. rep_3 is None when no reply held a 3-gram ("too short to
measure"): None fails its bound, it is not a perfect 0.

    mambaft ranges outputs/runs/*        # every run against these bounds
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Bounds:
    min_stop: float = 0.9        # share of replies that stop by themselves
    max_rep_3: float = 0.1       # mean repeated-3-gram rate over replies long enough to hold one
    min_distinct: float = 0.8    # distinct normalised replies / distinct prompts
    max_bare: float = 0.1        # share of replies under 3 words or a lone option letter
    # probes: the pass rate must be strictly above the base model's (no number to set)


BOUNDS = Bounds()


@dataclass(frozen=True)
class Check:
    """One rule of the verdict: what it says, the measured value, the bound, and whether it holds."""
    rule: str          # "stops", "does not loop", ...
    metric: str        # the number's name in summary.json
    value: Optional[float]
    bound: str         # ">= 0.9", "> base 0.14"
    ok: bool

    def line(self) -> str:
        v = "unmeasured" if self.value is None else f"{self.value:.2f}"
        return f"{'PASS' if self.ok else 'FAIL'}  {self.rule:<22} {self.metric} {v} (bound {self.bound})"


def _at_least(v, b) -> bool:
    return v is not None and v >= b


def _at_most(v, b) -> bool:
    return v is not None and v <= b


def reply_checks(stop_rate, rep_3, distinct, bare, bounds: Bounds = BOUNDS, where: str = "") -> list:
    """The four reply rules on one set of replies (`where` names it in each rule: "", " (EN probes)")."""
    return [Check(f"stops{where}", "stop_rate", stop_rate, f">= {bounds.min_stop}", _at_least(stop_rate, bounds.min_stop)),
            Check(f"does not loop{where}", "rep_3", rep_3, f"<= {bounds.max_rep_3}", _at_most(rep_3, bounds.max_rep_3)),
            Check(f"distinct replies{where}", "distinct_replies", distinct, f">= {bounds.min_distinct}",
                  _at_least(distinct, bounds.min_distinct)),
            Check(f"not bare{where}", "bare_rate", bare, f"<= {bounds.max_bare}", _at_most(bare, bounds.max_bare))]


def probe_check(pass_rate, base_pass_rate) -> Check:
    """More probes passed than the base model (unknown on either side fails)."""
    ok = pass_rate is not None and base_pass_rate is not None and pass_rate > base_pass_rate
    bound = "> base " + ("unknown" if base_pass_rate is None else f"{base_pass_rate:.2f}")
    return Check("passes more probes", "probe_pass_rate", pass_rate, bound, ok)


def verdict(checks) -> str:
    """One line: "meets the bounds" or the rules it fails."""
    bad = [c.rule for c in checks if not c.ok]
    return "meets the bounds" if not bad else "does NOT meet the bounds: fails " + ", ".join(bad)
