"""Which checkpoint of a run the course calls "fine-tuned": the checkpoint choice.

The demo base is a 17.7M-parameter model pretrained for under 3 hours on a CPU; after a few hundred
fine-tuning steps its greedy replies sit on a knife edge. On one run of the previous demo base the
step-200 checkpoint stopped in 0.97 of its replies and the step-300 one in 0.53 (issue 18), while the
validation loss fell at every evaluation: the lowest
validation loss does not pick the model that behaves. So the choice reads how each checkpoint's greedy
replies to held-out SELECTION-split questions behaved when it was saved (`reply_behaviour`, logged in
metrics.jsonl at every evaluation; the test split and the probes choose nothing):

    score = useful - rep_3                                                   (in [-1, 1])
    useful = distinct replies that stopped and are not bare / distinct questions   (in [0, 1])

A bare reply has fewer than 3 words or is a lone option letter ("A."); rep_3 is the mean repeated-3-gram
rate, and counts as 1 (the worst) when no reply was long enough to hold a 3-gram: too short to measure
is never a perfect 0. So a checkpoint that answers every one of n questions the same way scores at most
1/n (one useful reply), and one whose replies all differ, stop and say 3 words or more scores
stop - rep_3: a constant reply ranks below any varied one that stops as often, unless that one loops
(rep_3 above stop - 1/n). Issue 23: the score it replaces, stop - rep_3 - empty, gave "A." to every
question the perfect 1.0.

Highest score wins; ties go to the lower validation loss, then the later step. Rules:
    "behaviour"  the score above (the default)
    "val_loss"   the lowest validation loss (the classic early-stopping choice)
    "last"       the newest checkpoint
Only kept checkpoints can be chosen (the CPU budget keeps every one it saves).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

RULES = ("behaviour", "val_loss", "last")


@dataclass
class Choice:
    step: int
    path: Path
    rule: str
    reason: str
    table: list          # one dict per candidate: step, val_loss, stop, rep_3, distinct, bare, useful, score


def behaviour_score(row: dict) -> Optional[float]:
    """useful - rep_3 of one evaluation row (rep_3 unmeasured: 1), or None when the row has no reply
    quality (no replies, or a run logged before issue 23's metrics)."""
    if row.get("val_useful") is None:
        return None
    rep3 = row.get("val_rep_3")
    return row["val_useful"] - (1.0 if rep3 is None else rep3)


def choose_checkpoint(records: Sequence, eval_rows: Sequence[dict], rule: str = "behaviour") -> Choice:
    """records: CheckpointRecord (step, path, val_loss) of the kept checkpoints; eval_rows: the
    evaluation rows of metrics.jsonl (a row per evaluated step). Falls back to the lowest validation
    loss, then the newest, when the rule's numbers are missing (saying so in `reason`)."""
    if rule not in RULES:
        raise ValueError(f"checkpoint_choice={rule!r}: expected one of {', '.join(RULES)}")
    if not records:
        raise ValueError("no checkpoint to choose from (did the run save any?)")
    by_step = {int(r["step"]): r for r in eval_rows if "step" in r and "loss" not in r and "event" not in r}
    table = []
    for rec in records:
        row = by_step.get(rec.step, {})
        val = rec.val_loss if rec.val_loss is not None else row.get("val_loss")
        table.append({"step": rec.step, "val_loss": val, "stop": row.get("val_stop_rate"),
                      "rep_3": row.get("val_rep_3"), "distinct": row.get("val_distinct"),
                      "bare": row.get("val_bare_rate"), "useful": row.get("val_useful"),
                      "score": behaviour_score(row), "record": rec})
    newest = max(table, key=lambda t: t["step"])
    pick, reason = None, ""
    if rule == "behaviour":
        scored = [t for t in table if t["score"] is not None]
        if scored:
            inf = math.inf
            pick = max(scored, key=lambda t: (round(t["score"], 9), -(t["val_loss"] if t["val_loss"] is not None
                                                                      else inf), t["step"]))
            f = lambda v: "unmeasured" if v is None else f"{v:.2f}"  # noqa: E731
            reason = (f"best replies to the selection split's questions: stop {f(pick['stop'])}, "
                      f"rep_3 {f(pick['rep_3'])}, distinct {f(pick['distinct'])}, bare {f(pick['bare'])} "
                      f"(score {pick['score']:.2f})")
        else:
            rule, reason = "val_loss", "no reply quality was logged; "
    if rule == "val_loss" and pick is None:
        with_loss = [t for t in table if t["val_loss"] is not None]
        if with_loss:
            pick = min(with_loss, key=lambda t: (t["val_loss"], -t["step"]))
            reason += f"lowest validation loss ({pick['val_loss']:.4f})"
        else:
            rule, reason = "last", reason + "no validation loss was logged; "
    if pick is None:
        pick, reason = newest, reason + "the newest checkpoint"
    rows = [{k: v for k, v in t.items() if k != "record"} for t in table]
    return Choice(step=pick["step"], path=pick["record"].path, rule=rule, reason=reason, table=rows)
