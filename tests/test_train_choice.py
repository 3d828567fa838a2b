"""The checkpoint choice (mambaft.train.choice): which checkpoint notebook 04 calls "fine-tuned"."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mambaft.train.run_state import CheckpointRecord
from mambaft.train.choice import behaviour_score, choose_checkpoint


def _records(*val_losses):
    return [CheckpointRecord(step=100 * (i + 1), path=Path(f"ck/step_{100 * (i + 1)}"), val_loss=v)
            for i, v in enumerate(val_losses)]


def _evals(*behaviours):
    """behaviours: (stop, rep_3, distinct, bare, useful) per evaluation, as reply_behaviour logs them."""
    rows = [{"step": 0, "event": "start"}, {"step": 1, "loss": 7.0, "lr": 1e-3}]  # not evaluations
    for i, (stop, rep3, distinct, bare, useful) in enumerate(behaviours):
        rows.append({"step": 100 * (i + 1), "val_loss": 9.0, "val_stop_rate": stop, "val_rep_3": rep3,
                     "val_distinct": distinct, "val_bare_rate": bare, "val_useful": useful})
    return rows


def test_behaviour_beats_a_lower_validation_loss():
    # issue 18: step 200 stopped and did not loop, step 300 (lowest val loss) looped and ran on
    recs = _records(6.5, 6.4, 6.3)
    evals = _evals((0.8, 0.3, 1.0, 0.0, 0.8), (0.97, 0.11, 1.0, 0.0, 0.97), (0.53, 0.72, 1.0, 0.0, 0.53))
    c = choose_checkpoint(recs, evals, "behaviour")
    assert (c.step, c.rule, c.path) == (200, "behaviour", Path("ck/step_200"))
    assert "stop 0.97" in c.reason and "rep_3 0.11" in c.reason and "distinct 1.00" in c.reason
    assert [t["step"] for t in c.table] == [100, 200, 300] and c.table[2]["val_loss"] == 6.3
    assert choose_checkpoint(recs, evals, "val_loss").step == 300
    assert choose_checkpoint(recs, evals, "last").step == 300


def test_a_constant_reply_loses_to_a_varied_one_that_stops_as_often():
    # 32 questions. Step 100 answers "A." to all: it stops (1.0), holds no 3-gram (rep_3 unmeasured),
    # 1 distinct reply (1/32), all bare, no useful reply. Step 200 answers "I don't know." to all: 3 words,
    # one 3-gram that never repeats (rep_3 0), 1/32 distinct, 1 useful reply (1/32). Step 300 stops as
    # often, its replies all differ and have 3+ words but loop a little (rep_3 0.2): useful 1.0.
    # The old score (stop - rep_3 - empty) gave steps 100 and 200 the perfect 1.0.
    evals = _evals((1.0, None, 1 / 32, 1.0, 0.0), (1.0, 0.0, 1 / 32, 0.0, 1 / 32), (1.0, 0.2, 1.0, 0.0, 1.0))
    c = choose_checkpoint(_records(6.3, 6.3, 6.5), evals)
    assert c.step == 300
    scores = {t["step"]: t["score"] for t in c.table}
    assert scores[100] == pytest.approx(0.0 - 1.0)        # unmeasured rep_3 counts as the worst, 1
    assert scores[200] == pytest.approx(1 / 32 - 0.0)
    assert scores[300] == pytest.approx(1.0 - 0.2)


def test_ties_go_to_the_lower_validation_loss_then_the_later_step():
    same = ((1.0, 0.0, 1.0, 0.0, 1.0),) * 3
    assert choose_checkpoint(_records(6.5, 6.3, 6.4), _evals(*same)).step == 200
    assert choose_checkpoint(_records(6.3, 6.3, 6.3), _evals(*same)).step == 300


def test_missing_numbers_fall_back_and_say_so():
    recs = _records(6.5, 6.2, 6.4)
    c = choose_checkpoint(recs, [], "behaviour")                     # no reply quality logged
    assert (c.step, c.rule) == (200, "val_loss") and c.reason.startswith("no reply quality was logged")
    # a run logged before issue 23 (stop and rep_3 only) is not scored on them
    old = [{"step": 100, "val_stop_rate": 1.0, "val_rep_3": 0.0, "val_empty_rate": 0.0}]
    assert behaviour_score(old[0]) is None
    assert choose_checkpoint(recs, old, "behaviour").rule == "val_loss"
    c = choose_checkpoint(_records(None, None), [], "behaviour")
    assert (c.step, c.rule) == (200, "last") and "no validation loss" in c.reason
    with pytest.raises(ValueError, match="checkpoint_choice='best'"):
        choose_checkpoint(recs, [], "best")
    with pytest.raises(ValueError, match="no checkpoint"):
        choose_checkpoint([], [], "behaviour")


def _three_checkpoint_run(run: Path) -> Path:
    """A run folder as finetune writes it: checkpoints at steps 100/200/300 (val loss 6.5/6.4/6.3) and
    their evaluations in metrics.jsonl, where step 200's replies score best."""
    from mambaft.train import run_state as ck
    for step, vl in ((100, 6.5), (200, 6.4), (300, 6.3)):
        d = run / ck.CKPT_DIRNAME / ck.step_dirname(step)
        for f in ck.REQUIRED:
            (d / f).parent.mkdir(parents=True, exist_ok=True)
            if not (d / f).exists():
                (d / f).write_text("{}")
        (d / ck.MODEL_DIRNAME / "config.json").write_text(json.dumps({"training": {"val_loss": vl}}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _evals(
        (0.8, 0.3, 1.0, 0.0, 0.8), (0.97, 0.11, 1.0, 0.0, 0.97), (0.53, 0.72, 1.0, 0.0, 0.53))))
    return run


def test_course_reads_the_choice_from_a_run_folder(tmp_path):
    """chosen_checkpoint + evaluation_models on a synthetic run folder (the files finetune writes)."""
    from mambaft import course
    from mambaft.config import make_config
    from mambaft.train import run_state as ck
    run = _three_checkpoint_run(tmp_path / "run")
    cfg = make_config("quick", base=str(tmp_path / "base"))
    choice = course.chosen_checkpoint(cfg, run)
    assert choice.step == 200
    models = course.evaluation_models(cfg, run, choice)
    assert [n for n, _ in models] == ["base", "last step 300", "fine-tuned"]
    assert dict(models)["fine-tuned"] == run / ck.CKPT_DIRNAME / ck.step_dirname(200) / ck.MODEL_DIRNAME
    note = course.choice_note(choice)
    assert note.startswith('"fine-tuned" is the step-200 checkpoint (behaviour)') and "<- chosen" in note


def test_a_reopened_notebook_finds_its_two_chat_models_without_evaluating(tmp_path, monkeypatch, small_gpt2_folder):
    """course.chat_models: from the parameters and RUN_DIR alone, the base and the chosen checkpoint
    (the same as notebook 04's models cell), with nothing evaluated (no results written anywhere)."""
    from mambaft import course
    from mambaft.train import run_state as ck
    monkeypatch.setattr(course, "has_gpu", lambda: False)
    run = _three_checkpoint_run(course.finetune_dir(tmp_path / "RUN"))
    before = sorted(p for p in tmp_path.rglob("*"))
    pair = course.chat_models("quick", str(small_gpt2_folder), tmp_path / "RUN", seed=0)
    assert pair == {"base": Path(small_gpt2_folder),
                    "fine-tuned": run / ck.CKPT_DIRNAME / ck.step_dirname(200) / ck.MODEL_DIRNAME}
    assert sorted(p for p in tmp_path.rglob("*")) == before      # nothing evaluated, nothing written
