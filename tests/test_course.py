"""The course runner and the helpers its notebooks call (fast: no notebook runs a model here,
except the failure-report test, which runs a two-cell notebook in a real kernel)."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from mambaft import course
from mambaft.cli import course as course_cli
from mambaft.course import runner as course_runner
from mambaft.config import Config, make_config, parse_overrides


@pytest.fixture()
def cpu(monkeypatch):
    monkeypatch.setattr(course, "has_gpu", lambda: False)


def test_cpu_budget_replaces_gpu_numbers_and_names_origins(cpu, small_gpt2_folder):
    values = course.course_overrides("quick", str(small_gpt2_folder))
    cfg = make_config("quick", **values.overrides)
    assert cfg.max_steps == course.CPU_BUDGET["quick"]["max_steps"] == 300
    assert (cfg.num_gpus, cfg.batch_size, cfg.grad_accum) == (1, 8, 1)
    assert cfg.save_every == cfg.eval_every == 25            # 12 checkpoints per run, all kept
    assert cfg.keep_last == course.CPU_CHECKPOINTS == 12
    assert cfg.lr == 1e-5                                     # a user's base keeps the plan's lr
    assert "10000" in values.origins["max_steps"] and "CPU budget" in values.origins["max_steps"]
    text = values.explain(cfg)
    assert "max_steps = 300  (CPU budget; the plan's 10000 is sized for GPUs)" in text
    assert "weight_decay = 0.01  (preset quick)" in text
    assert "=> 8 rows/step x 300 steps = 2,400 rows" in text


def test_demo_base_gets_demo_lr_and_max_steps_parameter_wins(cpu, monkeypatch, small_gpt2_folder):
    monkeypatch.setattr("mambaft.config.DEMO_BASE", Path(small_gpt2_folder))   # the one demo-base path
    values = course.course_overrides("conversational", "", max_steps=30)
    cfg = make_config("conversational", **values.overrides)
    assert cfg.lr == course.DEMO_LR["conversational"] == 1e-3 and "demo base" in values.origins["lr"]
    assert cfg.max_steps == 30 and values.origins["max_steps"] == "notebook parameter MAX_STEPS"
    assert cfg.save_every == 2
    assert cfg.base == str(small_gpt2_folder)


def test_seed_parameter_becomes_the_config_seed_with_its_origin(cpu, small_gpt2_folder):
    values = course.course_overrides("quick", str(small_gpt2_folder), seed=7)
    cfg = make_config("quick", **values.overrides)
    assert cfg.seed == 7 and values.origins["seed"] == "notebook parameter SEED"
    assert "seed = 7  (notebook parameter SEED)" in values.explain(cfg)
    # the seed reaches the training processes of notebook 03
    cmd = course.finetune_command(cfg, cfg.base, "D", "O", num_processes=1)
    assert "seed=7" in [cmd[j + 1] for j, a in enumerate(cmd) if a == "--set"]
    assert make_config("quick", **course.course_overrides("quick", str(small_gpt2_folder)).overrides).seed == \
        Config().seed                                       # no SEED: the config's default
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="SEED="):
            course.course_overrides("quick", str(small_gpt2_folder), seed=bad)


def test_every_notebook_that_builds_a_config_takes_SEED():
    """`mambaft course --set SEED=N` must reach every notebook that trains, splits or samples."""
    import papermill as pm
    for name in course.NOTEBOOKS:
        path = course_runner.NOTEBOOK_DIR / f"{name}.ipynb"
        assert "SEED" in pm.inspect_notebook(str(path)), name
        nb = nbformat.read(str(path), as_version=4)
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", []))
        for call in ("course.course_overrides(", "ChatSettings(", "compare_models(", "diagnose("):
            for chunk in code.split(call)[1:]:
                args = chunk.split(")")[0] if call != "compare_models(" else chunk.split("display(")[0]
                assert "SEED" in args, f"{name}: {call}...) does not pass SEED"


def test_a_set_parameter_no_notebook_declares_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--set SEEED: no notebook"):
        course_runner.run_course("smoke", "", tmp_path, params={"SEEED": 1})
    assert not (tmp_path / "smoke").exists()                 # refused before any notebook ran


def test_run_environment_names_the_cpu_class():
    env = course_runner.run_environment()
    assert env["auto_precision"] in ("bf16", "fp32") and env["cpu_capability"]
    assert env["auto_precision"] in env["cpu_class"] and env["cpu_capability"] in env["cpu_class"]


def test_gpu_keeps_the_plan(monkeypatch, small_gpt2_folder):
    values = course.course_overrides("quick", str(small_gpt2_folder), device="cuda")
    cfg = make_config("quick", **values.overrides)
    assert (cfg.max_steps, cfg.num_gpus, cfg.batch_size, cfg.grad_accum) == (10_000, 6, 4, 8)


def test_bad_strategy_and_missing_base_are_named(cpu, tmp_path):
    with pytest.raises(ValueError, match="STRATEGY='fast'"):
        course.course_overrides("fast", "")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        course.course_overrides("smoke", str(tmp_path / "nope.pt"))


def test_finetune_command_round_trips_the_config(cpu, small_gpt2_folder):
    values = course.course_overrides("specialized", str(small_gpt2_folder))
    cfg = make_config("specialized", **values.overrides)
    cmd = course.finetune_command(cfg, cfg.base, "D", "O", num_processes=1)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "1" and "--cpu" in cmd
    i = cmd.index("mambaft.finetune")
    # paths absolute: the training processes start in the repository root, not where they were typed
    assert cmd[i + 1:i + 9] == ["--strategy", "specialized", "--base", str(small_gpt2_folder),
                                "--data", str(Path("D").absolute()), "--out", str(Path("O").absolute())]
    sets = [cmd[j + 1] for j, a in enumerate(cmd) if a == "--set"]
    rebuilt = make_config("specialized", base=cfg.base, **parse_overrides(sets))
    assert rebuilt.to_dict() == cfg.to_dict()
    preset = make_config("specialized")
    assert len(sets) == sum(1 for k, v in cfg.to_dict().items()
                            if k not in ("strategy", "base") and v != getattr(preset, k))
    # a value equal to the dataclass default but not to the preset is passed too (smoke's batch is 4)
    small = make_config("smoke", batch_size=Config().batch_size)
    sets = [a for j, a in enumerate(course.finetune_command(small, "", "D", "O")) if j and
            course.finetune_command(small, "", "D", "O")[j - 1] == "--set"]
    assert make_config("smoke", **parse_overrides(sets)) == small
    yaml = course.finetune_command(cfg, cfg.base, "D", "O", accelerate_config="six.yaml")
    assert yaml[3:5] == ["--config_file", str(Path("six.yaml").absolute())] and "--num_processes" not in yaml


def test_phase_folders_and_follow_plan(tmp_path):
    spec, quick = make_config("specialized"), make_config("quick")
    assert course.phase_dirs(spec, tmp_path) == [tmp_path / "phase1", tmp_path / "phase2"]
    assert course.phase_dirs(quick, tmp_path) == [tmp_path]

    class Proc:
        code = None

        def poll(self):
            return self.code

    proc = Proc()
    plan = course.follow_plan(spec, tmp_path, proc)
    assert [p for p, _ in plan] == [tmp_path / "phase1" / "metrics.jsonl", tmp_path / "phase2" / "metrics.jsonl"]
    phase1_done = plan[0][1]
    assert phase1_done() is False
    (tmp_path / "phase1").mkdir()
    (tmp_path / "phase1" / "result.json").write_text("{}")
    assert phase1_done() is True and plan[1][1] is proc


def test_summary_files_are_json_without_nan(tmp_path):
    path = course.write_summary(tmp_path, "04_evaluation", {"a": float("nan"), "b": (1, 2), "p": tmp_path})
    assert path == tmp_path / "04_evaluation" / "summary.json"
    assert json.loads(path.read_text()) == {"a": None, "b": [1, 2], "p": str(tmp_path)}
    assert course.read_summary(tmp_path, "04_evaluation")["b"] == [1, 2]
    with pytest.raises(FileNotFoundError, match="run notebook 00_diagnosis first"):
        course.read_summary(tmp_path, "00_diagnosis")
    with pytest.raises(ValueError, match="notebook '05_x'"):
        course.notebook_dir(tmp_path, "05_x")


def test_has_gpu_respects_hidden_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert course.has_gpu() is False


def test_child_env_sets_passive_threads_and_fast_malloc(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    env = course.child_env()
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and "mmap_max=0" in env["GLIBC_TUNABLES"]
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert course.child_env()["OMP_WAIT_POLICY"] == "ACTIVE"   # a user's choice is kept


def test_every_course_notebook_is_thin_and_has_one_literal_parameters_cell():
    import ast
    for name in course.NOTEBOOKS:
        nb = nbformat.read(str(course_runner.NOTEBOOK_DIR / f"{name}.ipynb"), as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        tree = ast.parse(tagged[0].source)
        names = []
        for node in tree.body:  # literals only: papermill does not recompute derived values
            assert isinstance(node, ast.Assign), (name, ast.dump(node))
            ast.literal_eval(node.value)
            names.append(node.targets[0].id)
        assert names[:3] == ["STRATEGY", "BASE", "RUN_DIR"], name
        assert all("#" in line for line in tagged[0].source.splitlines()), f"{name}: a value lacks its comment"
        after = code[code.index(tagged[0]) + 1].source
        assert "make_config(STRATEGY" in after, name
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), \
            f"{name} is committed with outputs"
        # Notebook 02's worked step (the cell that calls micro_step) is the one longer cell: its shift,
        # mask and mean are written out in plain torch to be read, beside the library's step.
        worked = [c for c in code if "micro_step(" in c.source]
        assert len(worked) == (name == "02_smoke_test"), name
        assert all(sum(1 for ln in c.source.splitlines() if ln.strip()) <= 12 for c in worked), name
        # The first cell holds imports only (and the notebook's set-up call): its length is no logic.
        head = ast.parse(code[0].source).body
        assert all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in head[:-1]), name
        assert isinstance(head[-1], (ast.Import, ast.ImportFrom)) or \
            ast.unparse(head[-1]) == "course.setup_notebook()", name
        longest = max(sum(1 for ln in c.source.splitlines() if ln.strip()) for c in code
                      if c is not tagged[0] and c is not code[0] and c not in worked)
        assert longest <= 6, f"{name}: a code cell of {longest} lines (the library holds the logic)"
        assert nb.cells[0].cell_type == "markdown" and nb.cells[-1].cell_type == "markdown", name
    nb03 = (course_runner.NOTEBOOK_DIR / "03_finetune_multi_gpu.ipynb").read_text()
    assert "import torch" not in nb03 and ".cuda" not in nb03


def _failing_notebook(folder: Path) -> None:
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('STRATEGY = "smoke"  # any\nRUN_DIR = "x"  # any', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("raise ValueError('the base has no end token: ' + STRATEGY)"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(folder / "00_diagnosis.ipynb"))


@pytest.mark.slow   # a notebook kernel
def test_failure_names_the_notebook_and_the_cell(tmp_path, capsys, monkeypatch):
    src = tmp_path / "src"
    _failing_notebook(src)
    with pytest.raises(course_runner.CourseError) as err:
        course_runner.run_course("smoke", "", tmp_path / "out", only=["00_diagnosis"], source_dir=src, progress=False)
    e = err.value
    assert (e.notebook, e.cell) == ("00_diagnosis", 4)   # papermill's injected-parameters cell is 2
    msg = str(e)
    assert "notebook 00_diagnosis failed in cell 4" in msg
    assert "ValueError: the base has no end token: smoke" in msg
    assert "raise ValueError" in msg and str(tmp_path / "out" / "smoke" / "00_diagnosis.ipynb") in msg
    # the CLI prints the same message and exits 1
    monkeypatch.setattr(course_runner, "NOTEBOOK_DIR", src)
    rc = course_cli.main(["--strategy", "smoke", "--out", str(tmp_path / "cli"), "--only", "00_diagnosis",
                             "--no-progress"])
    assert rc == 1
    assert "notebook 00_diagnosis failed in cell 4: ValueError" in capsys.readouterr().err


def test_unknown_notebook_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--only 07_x"):
        course_runner.run_course("smoke", "", tmp_path, only=["07_x"])


def test_the_configuration_prints_as_what_differs_from_the_preset(cpu, small_gpt2_folder):
    """Notebook 01 prints the table (each changed value: the preset's, this run's, the origin); the
    others print one line."""
    values = course.course_overrides("quick", str(small_gpt2_folder), seed=7)
    cfg = make_config("quick", **values.overrides)
    rows = {ln.split()[0]: ln for ln in values.table(cfg).splitlines()[2:-1]}
    assert rows["max_steps"].split()[1:3] == ["10000", "300"] and "CPU budget" in rows["max_steps"]
    assert rows["seed"].split()[1:3] == [str(make_config("quick").seed), "7"]
    assert rows["seed"].endswith("notebook parameter SEED")
    assert "weight_decay" not in rows and "lr" not in rows     # the preset's own values: unchanged
    assert values.table(cfg).splitlines()[-1] == "  => 8 rows/step x 300 steps = 2,400 rows"
    line = values.line(cfg)
    assert "\n" not in line and line.startswith("strategy quick on cpu: 8 rows/step x 300 steps, lr 1e-05, seed 7")


def test_every_notebook_ends_with_exercises_and_the_answers_ship_beside_them():
    """Each of 00-04 ends with 2-3 "change, predict, rerun" exercises; notebooks/answers.md answers
    each of them, in the notebook's own section."""
    import re
    answers = (course_runner.NOTEBOOK_DIR / "answers.md").read_text(encoding="utf-8")
    sections = dict(re.findall(r"^## (\d\d) [^\n]*\n(.*?)(?=^## |\Z)", answers, re.S | re.M))
    assert sorted(sections) == ["00", "01", "02", "03", "04"]
    for name in course.NOTEBOOKS:
        nb = nbformat.read(str(course_runner.NOTEBOOK_DIR / f"{name}.ipynb"), as_version=4)
        last = nb.cells[-1].source
        assert last.startswith("## Try it yourself") and f"answers.md`, section {name[:2]}" in last, name
        items = re.findall(r"^\d\. ", last, re.M)
        assert 2 <= len(items) <= 3 and last.count("*Predict") == len(items), name
        assert len(re.findall(r"^\d\. ", sections[name[:2]], re.M)) == len(items), name
        assert all(c.get("id") for c in nb.cells), f"{name}: a cell without an id (nbformat 4.5)"


def test_setup_notebook_logs_plain_text_and_draws_a_bar_as_one_line(monkeypatch, capsys):
    """course.setup_notebook(): `mambaft` messages at INFO and up on stdout as their text, once however
    often it is called; a tqdm.auto bar is one display updated in place, ending on its final state."""
    import logging
    import warnings

    import datasets
    import tqdm.auto
    import tqdm.autonotebook

    from mambaft.course import notebook as nb_setup
    shown = []

    class Handle:
        def update(self, obj):
            shown[-1] = str(obj)

    def fake_display(obj, display_id=False):
        assert display_id is True           # updatable in place, never a new output per redraw
        shown.append(str(obj))
        return Handle()

    log = logging.getLogger("mambaft")
    monkeypatch.setattr("IPython.display.display", fake_display)
    for module in (tqdm.auto, tqdm.autonotebook):
        monkeypatch.setattr(module, "tqdm", module.tqdm)      # restored after the test
    monkeypatch.setattr(log, "handlers", [])
    monkeypatch.setattr(log, "propagate", True)
    monkeypatch.setattr(log, "level", log.level)
    monkeypatch.setattr(warnings, "filters", warnings.filters[:])
    try:
        nb_setup.setup_notebook()
        nb_setup.setup_notebook()
        assert len(log.handlers) == 1
        logging.getLogger("mambaft.data.prepare").info("[prepare] mode offline")
        logging.getLogger("mambaft.data.prepare").debug("not shown")
        assert capsys.readouterr() == ("[prepare] mode offline\n", "")
        for _ in tqdm.auto.tqdm(range(40), desc="lr sweep"):
            pass
        assert len(shown) == 1 and shown[0].startswith("lr sweep: 100%") and "40/40" in shown[0], shown
        assert capsys.readouterr() == ("", "")                # nothing on stderr, no stray newline
    finally:
        datasets.enable_progress_bars()


def test_the_course_states_its_expected_time_before_it_starts():
    from mambaft.course.runner import MEASURED_MINUTES, expected_time
    assert f"about {MEASURED_MINUTES['quick'][0]:g} min" in expected_time("quick", "")
    assert "not yet measured for specialized" in expected_time("specialized", "")
    assert "not measured for this base" in expected_time("quick", "final_model.pt")
