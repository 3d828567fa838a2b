"""Issue 28, findings 3-7: a resume is the same run or it says so; every checkpoint is verified or not
used; plausible damage never blocks a resume while an older checkpoint is intact; full disks.

Each test failed before: a changed --base/--data resumed the old run with rc 0; a checkpoint without
manifest.json (or with `step=999` in trainer_state.pt) was trusted; a malformed manifest, a `null` or
non-UTF-8 line in metrics.jsonl, or NaN weights in the newest checkpoint was a traceback; a finished
run whose checkpoints/ was gone lost its metrics.jsonl; ENOSPC inside torch.save was a raw traceback.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mambaft.checkpoint import CheckpointError, save_checkpoint
from mambaft.errors import DiskFullError
from mambaft.train import finetune
from mambaft.train import run_state as ck
from mambaft.train.run_inputs import RunChangedError
from tests.test_run_safety import base, data, tiny  # noqa: F401  (shared fixtures)
from tests.test_train_loop import QA, QUIET, learnable_model, train_losses, write_prepared


@pytest.fixture()
def killed_run(tmp_path, data, base):
    """A run of 4 steps whose newest checkpoint is step 4 (as if killed right after it): a resume to 6."""
    out = tmp_path / "run"
    finetune(tiny(4), base, data, out, **QUIET)
    return out


# --- 4. a resume with other inputs refuses, naming each difference ---------------------------------------
def test_a_resume_with_another_base_refuses_and_names_it(killed_run, data, tmp_path):
    other = save_checkpoint(learnable_model(seed=9), tmp_path / "other")
    with pytest.raises(RunChangedError, match=r"not the same run: the base weights changed .*--resume-anyway"):
        finetune(tiny(6), other, data, killed_run, **QUIET)
    assert sorted(train_losses(killed_run)) == [1, 2, 3, 4]     # nothing was trained on the wrong base


def test_a_resume_with_re_prepared_data_refuses_unless_resume_anyway(killed_run, base, data, tmp_path, capsys):
    changed = write_prepared(tmp_path / "data2", pairs=QA[::-1])
    with pytest.raises(RunChangedError, match="the prepared data changed"):
        finetune(tiny(6), base, changed, killed_run, **QUIET)
    res = finetune(tiny(6), base, changed, killed_run, resume_anyway=True, **QUIET)
    assert res["steps"] == 6 and "--resume-anyway: resuming with changed inputs" in capsys.readouterr().out


def test_a_resume_with_another_seed_refuses_and_a_longer_run_is_a_note(killed_run, base, data, capsys):
    with pytest.raises(RunChangedError, match=r"seed 1337 -> 7"):
        finetune(tiny(6, seed=7), base, data, killed_run, **QUIET)
    capsys.readouterr()
    finetune(tiny(6), base, data, killed_run, **QUIET)
    out = capsys.readouterr().out
    assert "changed for this resume: max_steps 4 -> 6" in out
    assert "config differs" not in out                          # the old false note (json.dumps unsorted)


def test_a_same_config_resume_says_nothing_about_config(killed_run, base, data, capsys):
    finetune(tiny(4), base, data, killed_run, **QUIET)
    out = capsys.readouterr().out
    assert "differs" not in out and "changed for this resume" not in out


# --- 5. a finished run whose checkpoints/ is gone is moved aside, never overwritten ------------------------
def test_a_run_without_checkpoints_is_moved_aside_not_deleted(killed_run, base, data):
    metrics = (killed_run / "metrics.jsonl").read_bytes()
    final = (killed_run / "final" / "model.safetensors").read_bytes()
    shutil.rmtree(killed_run / "checkpoints")
    finetune(tiny(2), base, data, killed_run, **QUIET)
    aside = next(killed_run.glob("replaced-*"))
    assert (aside / "metrics.jsonl").read_bytes() == metrics
    assert (aside / "final" / "model.safetensors").read_bytes() == final


# --- 3. checkpoints without a valid manifest are unverified -------------------------------------------------
def test_a_checkpoint_without_its_manifest_is_unverified_and_the_older_one_used(killed_run, base, data, capsys):
    step4 = killed_run / "checkpoints" / "step_0000004"
    (step4 / "manifest.json").unlink()
    state = torch.load(step4 / "trainer_state.pt", weights_only=True)
    state["step"] = 999                                          # the "done: 12 steps, nothing trained"
    torch.save(state, step4 / "trainer_state.pt")
    res = finetune(tiny(6), base, data, killed_run, **QUIET)
    out = capsys.readouterr().out
    assert "step_0000004 is unverified (no manifest.json), kept as unverified-step_0000004" in out
    assert res["resumed_from"] == 2 and sorted(train_losses(killed_run)) == [1, 2, 3, 4, 5, 6]


def test_legacy_checkpoints_need_the_explicit_flag(tmp_path, base, data):
    out = tmp_path / "run"
    finetune(tiny(2), base, data, out, **QUIET)
    (out / "checkpoints" / "step_0000002" / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="--trust-legacy-checkpoints"):
        finetune(tiny(4), base, data, out, **QUIET)
    res = finetune(tiny(4), base, data, out, trust_legacy=True, **QUIET)
    assert res["resumed_from"] == 2 and res["steps"] == 4


@pytest.mark.parametrize("manifest", ['{"files": [1, 2]}', '{"files": {"model/config.json": 3}}', "not json",
                                      '{"files": {"model/config.json": {"size": "big", "sha256": 1}}}'])
def test_a_malformed_manifest_falls_back_to_the_older_checkpoint(killed_run, base, data, capsys, manifest):
    (killed_run / "checkpoints" / "step_0000004" / "manifest.json").write_text(manifest)
    res = finetune(tiny(6), base, data, killed_run, **QUIET)
    assert res["resumed_from"] == 2 and "manifest.json is unreadable" in capsys.readouterr().out


def test_nan_weights_in_the_newest_checkpoint_fall_back(killed_run, base, data, capsys):
    from safetensors.torch import load_file, save_file
    step4 = killed_run / "checkpoints" / "step_0000004"
    f = step4 / "model" / "model.safetensors"
    sd = load_file(str(f))
    sd["dense1.weight"][0, 0] = float("nan")
    save_file(sd, str(f), metadata={"format": "mambaft-model"})
    from mambaft import durable
    durable.write_manifest(step4 / "model")                     # damage that the manifests agree with
    durable.write_manifest(step4)
    res = finetune(tiny(6), base, data, killed_run, **QUIET)
    out = capsys.readouterr().out
    assert res["resumed_from"] == 2 and "NaN/inf" in out and "kept as damaged-step_0000004" in out


# --- 7. metrics.jsonl never blocks a resume ---------------------------------------------------------------
@pytest.mark.parametrize("bad", [b"null", b"\xff\xfe not utf-8", b"[1, 2]", b'{"step": "x"}'])
def test_a_bad_metrics_line_is_reported_and_kept_aside(killed_run, base, data, capsys, bad):
    path = killed_run / "metrics.jsonl"
    path.write_bytes(path.read_bytes() + bad + b"\n")
    res = finetune(tiny(6), base, data, killed_run, **QUIET)
    assert res["steps"] == 6 and sorted(train_losses(killed_run)) == [1, 2, 3, 4, 5, 6]
    assert "1 unreadable line(s)" in capsys.readouterr().out
    assert (killed_run / "metrics.jsonl.bad-lines").read_bytes() == bad + b"\n"


def test_an_unreadable_checkpoint_config_is_a_note_not_a_traceback(tmp_path, base, data, capsys):
    out = tmp_path / "run"
    finetune(tiny(2), base, data, out, **QUIET)
    (out / "run_inputs.json").unlink()                          # a run from before inputs were recorded
    step = out / "checkpoints" / "step_0000002"
    (step / "config.json").write_text("{not json")
    (step / "manifest.json").unlink()
    res = finetune(tiny(4), base, data, out, trust_legacy=True, **QUIET)
    assert res["steps"] == 4 and "config.json is unreadable" in capsys.readouterr().out


# --- 6. ENOSPC inside torch.save: one line, the half-written folder removed ------------------------------
def test_enospc_inside_torch_save_is_a_disk_full_error_and_leaves_no_temp(tmp_path, base, data, monkeypatch):
    out = tmp_path / "run"
    real = torch.save

    def full(obj, f, *a, **kw):
        if str(f).endswith("trainer_state.pt") and "step_0000004" in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed "
                               "writing file data/3: file write failed")
        return real(obj, f, *a, **kw)
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFullError, match=r"disk full while writing checkpoint step_0000004 .* MB free.*"
                                            r"intact checkpoints: step_0000002"):
        finetune(tiny(4), base, data, out, **QUIET)
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(torch, "save", real)
    (out / "checkpoints" / ".tmp-step_0000009").mkdir()          # a leftover of an earlier kill
    (out / ".tmp-final").mkdir()
    res = finetune(tiny(4), base, data, out, **QUIET)
    assert res["steps"] == 4 and not (out / ".tmp-final").exists()
    assert not (out / "checkpoints" / ".tmp-step_0000009").exists()


# --- max_seq_len is honoured by training, not only shown in the plan ---------------------------------------
def test_a_max_seq_len_shorter_than_the_prepared_rows_is_refused(tmp_path, base, data):
    from mambaft.errors import DataError
    with pytest.raises(DataError, match=r"longest training row has \d+ tokens, more than max_seq_len=16"):
        finetune(tiny(2, max_seq_len=16), base, data, tmp_path / "run", **QUIET)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
