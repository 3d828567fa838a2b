"""Issue 28, finding 9 (library side): the course's parameters checked where they enter
(mambaft.course.params), and a rerun into a run folder with another SEED refused.

Before: MAX_STEPS=-5 silently meant the preset's steps, NUM_PROCESSES=-1 was launched, and
`--strategy smoke --set STRATEGY=quick` ran quick in a folder labelled smoke.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mambaft.course.params import PARAMS, CourseParamError, check_params, check_same_run

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name,value,msg", [("MAX_STEPS", -5, r"0\.\.100000"), ("NUM_PROCESSES", -1, r"0\.\.64"),
                                            ("SEED", -1, ">= 0"), ("SEED", 1.5, "an integer"),
                                            ("STRATEGY", "fast", "one of quick"), ("CHAT", "yes", "true or false"),
                                            ("SEEED", 1, "not a course parameter")])
def test_bad_parameters_are_refused_naming_them(name, value, msg):
    with pytest.raises(CourseParamError, match=f"{name}.*{msg}"):
        check_params({name: value})


def test_set_strategy_against_the_strategy_flag_is_a_conflict():
    with pytest.raises(CourseParamError, match="--set STRATEGY=quick disagrees with --strategy smoke"):
        check_params({"STRATEGY": "quick"}, strategy="smoke")
    assert check_params({"STRATEGY": "smoke", "SEED": 3}, strategy="smoke") == {"STRATEGY": "smoke", "SEED": 3}


def test_a_rerun_with_another_seed_is_refused_and_presentation_may_change(tmp_path):
    (tmp_path / "course.json").write_text(json.dumps({"params": {"SEED": 0, "EVAL_LIMIT": 30, "STRATEGY": "quick"}}))
    with pytest.raises(CourseParamError, match="SEED 0 -> 1"):
        check_same_run(tmp_path, {"SEED": 1, "STRATEGY": "quick"})
    assert check_same_run(tmp_path, {"SEED": 0, "EVAL_LIMIT": 10}) == ["EVAL_LIMIT 30 -> 10"]
    assert check_same_run(tmp_path, {"SEED": 1}, resume_anyway=True) == ["SEED 0 -> 1"]


def test_the_table_knows_every_parameter_of_the_notebooks_and_accepts_their_defaults():
    import ast
    for nb in sorted(NOTEBOOKS.glob("0*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
        for node in ast.parse("".join(cell["source"])).body:
            name = node.targets[0].id
            assert name in PARAMS, f"{nb.name}: {name} is not in mambaft.course.params.PARAMS"
            check_params({name: ast.literal_eval(node.value)})
