"""Issue 28, finding 1-2: output folders are owned, never assumed (mambaft.outdir).

`prepare --out`, `info --to` and `export --to` used to swap their finished folder in whole, deleting
whatever was there (other files, even the source .jsonl prepare had just read); `finetune --out` at the
base model's folder overwrote its config.json. Each test below failed before.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mambaft import outdir
from mambaft.checkpoint import load_checkpoint, save_checkpoint
from mambaft.cli import main
from mambaft.outdir import OutputFolderError
from mambaft.train import finetune
from tests.test_run_safety import HUB, tiny
from tests.test_train_loop import QUIET, learnable_model, write_prepared


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_prepared(tmp_path_factory.mktemp("owned") / "data")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_checkpoint(learnable_model(seed=4), tmp_path_factory.mktemp("owned") / "base")


def _prepare(out: Path, *extra: str, source: Path = HUB / "alpaca_data.json") -> int:
    return main(["prepare", "--strategy", "conversational", "--quiet", "--out", str(out),
                 "--source", f"alpaca={source}", "--set", "data_mode=offline",
                 "--set", 'offline_sources={"alpaca": 1.0}', "--set", "val_fraction=0.3",
                 "--set", "max_seq_len=64", "--set", "max_examples_per_source=2", *extra])


# --- the library rule -----------------------------------------------------------------------------
def test_claim_accepts_absent_empty_and_own_folders_and_refuses_the_rest(tmp_path):
    assert outdir.claim(tmp_path / "new", "prepare") is None
    (tmp_path / "empty").mkdir()
    assert outdir.claim(tmp_path / "empty", "prepare") is None
    mine = tmp_path / "mine"
    outdir.mark(mine, "prepare")
    (mine / "anything.txt").write_text("x")
    assert outdir.claim(mine, "prepare") is None
    with pytest.raises(OutputFolderError, match=r"written by `mambaft prepare`.*--force"):
        outdir.claim(mine, "export")                     # another command's folder
    legacy = tmp_path / "legacy"                          # written before markers: only prepare's own names
    (legacy / "train").mkdir(parents=True)
    (legacy / "stats.json").write_text("{}")
    assert outdir.claim(legacy, "prepare", own_names=outdir.PREPARE_NAMES) is None


def test_force_moves_a_foreign_folder_aside_and_deletes_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    said = []
    moved = outdir.claim(out, "prepare", force=True, say=said.append)
    assert moved is not None and (moved / "notes.txt").read_text() == "mine" and not out.exists()
    assert moved.name.startswith("out.replaced-") and str(moved) in said[0]


# --- prepare ----------------------------------------------------------------------------------------
@pytest.mark.slow   # two small prepares
def test_prepare_into_a_folder_with_other_files_refuses_and_force_keeps_them(tmp_path, capsys):
    out = tmp_path / "work"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    assert _prepare(out) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mambaft prepare: error: {out}: a folder not written by this command (holds thesis.tex)")
    assert len(err.splitlines()) == 1 and (out / "thesis.tex").read_text() == "years of work"
    assert _prepare(out, "--force") == 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("work.replaced-")]
    assert len(aside) == 1 and (aside[0] / "thesis.tex").read_text() == "years of work"
    assert outdir.owner(out) == "prepare"
    assert _prepare(out) == 0                              # its own folder: rewritten without a word


def test_prepare_never_writes_over_the_folder_of_its_own_source(tmp_path, capsys):
    src = tmp_path / "mydata"
    src.mkdir()
    shutil.copy(HUB / "alpaca_data.json", src / "alpaca_data.json")
    for extra in ((), ("--force",)):                      # not even with --force
        assert _prepare(src, *extra, source=src / "alpaca_data.json") == 2
        assert "holds source alpaca" in capsys.readouterr().err
    assert (src / "alpaca_data.json").read_bytes() == (HUB / "alpaca_data.json").read_bytes()


# --- info --to and export --to --------------------------------------------------------------------------
def test_info_and_export_refuse_a_folder_with_other_files(tmp_path, small_gpt2_folder, capsys):
    for cmd in (["info", str(small_gpt2_folder), "--to"], ["export", str(small_gpt2_folder), "--to"]):
        out = tmp_path / cmd[0]
        out.mkdir()
        (out / "keep.txt").write_text("keep")
        assert main([*cmd, str(out)]) == 2
        assert "not written by this command" in capsys.readouterr().err
        assert (out / "keep.txt").read_text() == "keep"
        assert main([*cmd, str(out), "--force"]) == 0
        assert list(tmp_path.glob(f"{cmd[0]}.replaced-*/keep.txt"))
        assert main([*cmd, str(out)]) == 0                # rewriting its own output is fine


def test_info_to_its_own_input_or_inside_it_is_refused(tmp_path, small_gpt2_folder, capsys):
    model = tmp_path / "model"
    shutil.copytree(small_gpt2_folder, model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    for to in (model, model / "sub"):
        assert main(["info", str(model), "--to", str(to), "--force"]) == 2
        assert "is the model being read" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before


# --- finetune --------------------------------------------------------------------------------------------
def test_finetune_out_at_the_base_models_folder_is_refused_and_the_base_still_loads(tmp_path, data):
    base = save_checkpoint(learnable_model(seed=2), tmp_path / "demo_base")
    before = {p.name: p.read_bytes() for p in base.iterdir()}
    for out in (base, base / "run"):
        for force in (False, True):
            with pytest.raises(OutputFolderError, match="is the base model"):
                finetune(tiny(2), base, data, out, force=force, **QUIET)
    assert {p.name: p.read_bytes() for p in base.iterdir()} == before
    load_checkpoint(base)


def test_finetune_into_a_foreign_folder_refuses_and_force_moves_it(tmp_path, data, base):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.md").write_text("n")
    with pytest.raises(OutputFolderError, match="holds notes.md"):
        finetune(tiny(2), base, data, out, **QUIET)
    assert sorted(p.name for p in out.iterdir()) == ["notes.md"]
    res = finetune(tiny(2), base, data, out, force=True, **QUIET)
    assert res["steps"] == 2 and outdir.owner(out) == "finetune"
    assert (next(tmp_path.glob("run.replaced-*")) / "notes.md").read_text() == "n"


def test_a_foreign_folder_holding_the_base_is_refused_even_with_force(tmp_path, data):
    out = tmp_path / "stuff"
    base = save_checkpoint(learnable_model(seed=3), out / "base")
    with pytest.raises(OutputFolderError, match="holds the base model"):
        finetune(tiny(2), base, data, out, force=True, **QUIET)
    load_checkpoint(base)
    assert json.loads((base / "config.json").read_text())["format"] == "mambaft-model"
