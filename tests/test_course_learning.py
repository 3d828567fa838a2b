"""See it learn (issue 26): the probes' answers across a run's checkpoints as a prompt x step table,
read from hand-written OUT/probes/step_N.jsonl files in the format write_probe_answers writes.

    python -m pytest -q tests/test_course_learning.py
"""
from __future__ import annotations

import json
from pathlib import Path

from mambaft import course
from mambaft.config import make_config
from mambaft.course import learning


def write_probes(run: Path, step: int, answers: dict) -> None:
    """answers: id -> (answer, passed, stopped), written as write_probe_answers does (one JSON a line)."""
    folder = run / "probes"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"step_{step}.jsonl").open("w", encoding="utf-8") as f:
        for pid, (answer, passed, stopped) in answers.items():
            f.write(json.dumps({"step": step, "id": pid, "lang": pid[-2:], "prompt": f"User: {pid}?\nAssistant:",
                                "answer": answer, "raw": " " + answer, "passed": passed, "stopped": stopped,
                                "end_token": stopped, "new_tokens": 3 if stopped else 64}) + "\n")


def a_run(run: Path) -> Path:
    write_probes(run, 0, {"capital_en": ("the United States of America and the United", False, False),
                          "hello_en": ("", False, False)})
    write_probes(run, 25, {"capital_en": ("The family.", False, True), "hello_en": ("Hello", True, True)})
    write_probes(run, 100, {"capital_en": ("Paris.", True, True), "hello_en": ("Hello!", True, True)})
    write_probes(run, 50, {"capital_en": ("A.", False, True), "hello_en": ("Hi", True, True)})
    (run / "probes" / "notes.txt").write_text("not a probes file")
    return run


def test_probe_files_are_ordered_by_step_number_not_by_name(tmp_path):
    steps = [s for s, _ in learning.probe_files(a_run(tmp_path))]
    assert steps == [0, 25, 50, 100]          # by name "step_100" would sort before "step_25"


def test_the_table_holds_every_answer_with_its_mark_and_counts(tmp_path):
    t = course.probe_table(a_run(tmp_path))
    assert t.steps == [0, 25, 50, 100] and t.ids == ["capital_en", "hello_en"]
    assert [t.passed(s) for s in t.steps] == [0, 1, 1, 2]
    assert [t.stopped(s) for s in t.steps] == [0, 2, 2, 2]
    lines = t.text(columns=5, width=12).splitlines()
    assert lines[0].split() == ["probe", "0", "(base)", "25", "50", "100"]
    # the base's long answer is cut to 12 characters ("..." included), the empty one says so
    assert lines[1].split(None, 1)[1].split("  ")[0] == "- the Unite..."
    assert "- (empty)" in lines[2] and "+ Paris." in lines[1] and "+ Hello!" in lines[2]
    assert lines[-1].split() == ["passed/stopped", "0/0", "of", "2", "1/2", "of", "2", "1/2", "of", "2",
                                 "2/2", "of", "2"]
    assert t.records()[0]["steps"][100] == {"answer": "Paris.", "passed": True, "stopped": True}


def test_many_steps_show_an_even_spread_with_the_first_and_last(tmp_path):
    t = course.probe_table(a_run(tmp_path))
    header = t.text(columns=3).splitlines()[0].split()
    assert header == ["probe", "0", "(base)", "50", "100"]    # indices 0, round(1.5)=2, 3 of 4 steps


def test_the_reading_quotes_this_runs_numbers(tmp_path):
    text = course.probe_table(a_run(tmp_path)).reading()
    assert "at step 0 (base) 0 of 2 probes passed and 0 stopped" in text
    assert "at step 100 2 passed and 2 stopped" in text
    assert text.endswith("it answers more probes right.")   # 2 more stop and 2 more pass: not only the format


def test_a_run_that_only_learns_to_stop_is_read_as_such(tmp_path):
    write_probes(tmp_path, 0, {"a_en": ("x y z", False, False)})
    write_probes(tmp_path, 10, {"a_en": ("A.", False, True)})
    text = course.probe_table(tmp_path).reading()
    assert text.endswith("it learned to end its replies more than to answer them right.")


def test_no_probes_folder_gives_no_table_and_phase_2_starts_from_phase_1(tmp_path):
    assert course.probe_table(tmp_path) is None
    cfg = make_config("specialized")
    write_probes(tmp_path / "phase1", 0, {"a_en": ("x", False, False)})
    write_probes(tmp_path / "phase2", 0, {"a_en": ("y", True, True)})
    tables = course.probe_tables(cfg, tmp_path)
    assert [t.start for t in tables] == ["base", "phase 1"]
    assert tables[1].text().splitlines()[0].split() == ["probe", "0", "(phase", "1)"]
