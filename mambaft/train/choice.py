"""Which checkpoint of a run the course calls "fine-tuned": the checkpoint choice.

The demo base is a 7.7M-parameter model trained for minutes; after a few hundred fine-tuning steps its
greedy replies sit on a knife edge. On one run the step-200 checkpoint stopped in 0.97 of its replies
and the step-300 one in 0.53 (issue 18), while the validation loss fell at every evaluation: the lowest
validation loss does not pick the model that behaves. So the choice reads how each checkpoint's greedy
replies to held-out validation questions behaved when it was saved (`reply_behaviour`, logged in
metrics.jsonl at every evaluation):

    score = stop rate - repeated-3-gram rate - empty-reply rate          (each in [0, 1])

highest score wins; ties go to the lower validation loss, then the later step. Rules:
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
    table: list          # one dict per candidate: step, val_loss, stop, rep_3, empty, score


def behaviour_score(row: dict) -> Optional[float]:
    """stop - rep_3 - empty of one evaluation row, or None when it has no reply behaviour."""
    if row.get("val_stop_rate") is None:
        return None
    return row["val_stop_rate"] - (row.get("val_rep_3") or 0.0) - (row.get("val_empty_rate") or 0.0)


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
                      "rep_3": row.get("val_rep_3"), "empty": row.get("val_empty_rate"),
                      "score": behaviour_score(row), "record": rec})
    newest = max(table, key=lambda t: t["step"])
    pick, reason = None, ""
    if rule == "behaviour":
        scored = [t for t in table if t["score"] is not None]
        if scored:
            inf = math.inf
            pick = max(scored, key=lambda t: (round(t["score"], 9), -(t["val_loss"] if t["val_loss"] is not None
                                                                      else inf), t["step"]))
            reason = (f"best behaviour on held-out validation questions: stop {pick['stop']:.2f}, "
                      f"rep_3 {pick['rep_3']:.2f}, empty {pick['empty']:.2f} (score {pick['score']:.2f})")
        else:
            rule, reason = "val_loss", "no reply behaviour was logged; "
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
