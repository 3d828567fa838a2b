"""Issue 28, finding 8 and the smaller ones: model files are checked before use, parameters where
they enter. Each test failed before: int/bool/complex weights were cast and loaded; a config.json with
huge sizes allocated before the shape check; a FIFO as the model hung; NaN models were exported and
diagnosed with rc 0; a tokenizer.json with ids past the vocabulary loaded (chat then hit IndexError);
a flipped byte in model.safetensors loaded silently; bad chat_template.json / tokenizer.json were
ValueError tracebacks; --set beside its own flag was dropped; generate --new -1 meant 0; a closed
stdin crashed chat; /set max_new_tokens=10**9 ended the chat.
"""
from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mambaft.checkpoint import CheckpointError, load_checkpoint
from mambaft.cli import main


@pytest.fixture()
def model(tmp_path, small_gpt2_folder) -> Path:
    folder = tmp_path / "m"
    shutil.copytree(small_gpt2_folder, folder)
    return folder


def _rewrite(folder: Path, **tensors) -> None:
    """Replace tensors of the folder's weights (the manifest removed: the damage under test is another)."""
    f = folder / "model.safetensors"
    sd = load_file(str(f))
    sd.update(tensors)
    save_file(sd, str(f), metadata={"format": "mambaft-model"})
    (folder / "manifest.json").unlink(missing_ok=True)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_non_floating_weights_are_refused(model, dtype):
    w = load_file(str(model / "model.safetensors"))["dense1.weight"]
    _rewrite(model, **{"dense1.weight": torch.ones_like(w, dtype=dtype)})
    with pytest.raises(CheckpointError, match=r"non-floating weights \(1\): dense1.weight"):
        load_checkpoint(model)


def test_huge_config_sizes_are_refused_before_anything_is_allocated(model, monkeypatch):
    import mambaft.checkpoint as c
    meta = json.loads((model / "config.json").read_text())
    meta["model"]["d_model"] = 1_000_000                 # ~ 10**12 parameters: terabytes if built
    (model / "config.json").write_text(json.dumps(meta))
    (model / "manifest.json").unlink()
    built = []
    real = c.build_model
    monkeypatch.setattr(c, "build_model", lambda cfg: built.append(torch.empty(0).device) or real(cfg))
    with pytest.raises(CheckpointError, match=r"shape mismatches: dense1.weight: file \(64, 32\) vs model \(64, 1000000\)"):
        load_checkpoint(model)
    assert [d.type for d in built] == ["meta"]       # built once, on the meta device, then refused


def test_a_named_pipe_is_refused_not_read_forever(tmp_path, model):
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(fifo)
    (model / "model.safetensors").unlink()
    os.mkfifo(model / "model.safetensors")
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(model)


def test_a_flipped_byte_in_a_model_folder_is_caught_by_its_manifest(model):
    f = model / "model.safetensors"
    b = bytearray(f.read_bytes())
    b[-5] ^= 0x01
    f.write_bytes(bytes(b))
    with pytest.raises(CheckpointError, match="does not match its manifest: model.safetensors does not match its checksum"):
        load_checkpoint(model)


def test_nan_weights_are_refused_by_export_and_diagnose_and_named_by_info(tmp_path, model, capsys):
    w = load_file(str(model / "model.safetensors"))["dense1.weight"].clone()
    w[0, 0] = float("nan")
    _rewrite(model, **{"dense1.weight": w})
    assert main(["export", str(model), "--to", str(tmp_path / "hf")]) == 2
    assert "hold NaN/inf (e.g. dense1.weight)" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    assert main(["diagnose", "--model", str(model)]) == 2
    assert "dense1.weight" in capsys.readouterr().err
    with pytest.warns(RuntimeWarning):
        assert main(["info", str(model)]) == 0
    assert "dense1.weight" in capsys.readouterr().out


def test_a_tokenizer_with_ids_past_the_vocabulary_is_refused(model):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    tok.add_tokens([f"<extra_{i}>" for i in range(5)])   # ids 50257..50261: no embedding rows
    tok.save(str(model / "tokenizer.json"))
    (model / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="50,262 token ids but the model's vocabulary has 50,257"):
        load_checkpoint(model)


@pytest.mark.parametrize("name,text", [("chat_template.json", "[1]"), ("chat_template.json", '{"user_prefix": 3}'),
                                       ("chat_template.json", '{"nope": 1}'), ("tokenizer.json", "{}")])
def test_bad_template_or_tokenizer_files_are_one_line_errors(model, capsys, name, text):
    (model / name).write_text(text)
    (model / "manifest.json").unlink()
    assert main(["info", str(model)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mambaft info: error: {model / name}: not a") and len(err.splitlines()) == 1


# --- parameters where they enter ------------------------------------------------------------------------
def test_set_beside_its_own_flag_is_a_conflict(tmp_path, capsys):
    assert main(["finetune", "--strategy", "smoke", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                 "--max-steps", "5", "--set", "max_steps=7"]) == 2
    assert "--max-steps 5 and --set max_steps=7 disagree" in capsys.readouterr().err


@pytest.mark.parametrize("new", ["-1", "0", "1000000000"])
def test_generate_new_is_bounded(small_gpt2_folder, new, capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(small_gpt2_folder), "--new", new])
    assert e.value.code == 2 and f"--new {new}: expected 1 to 100,000" in capsys.readouterr().err


def test_chat_with_stdin_closed_is_a_one_line_error(small_gpt2_folder, capsys):
    closed = io.StringIO()
    closed.close()
    from mambaft.cli import run_command
    from mambaft.cli.chat import main as chat_main
    rc = run_command("chat", lambda argv: chat_main(argv, stdin=closed, stdout=io.StringIO()),
                     ["--model", str(small_gpt2_folder)])
    assert rc == 2 and "stdin is closed" in capsys.readouterr().err


def test_set_max_new_tokens_too_large_is_refused_and_the_chat_goes_on(small_gpt2_folder):
    from mambaft.chat.session import ChatSession
    from mambaft.chat.terminal import run_chat
    session = ChatSession.load(small_gpt2_folder)
    out = io.StringIO()
    replies = run_chat(session, io.StringIO("/set max_new_tokens=1000000000\n/set max_new_tokens=2\nHi\n"),
                       out, stats=False)
    text = out.getvalue()
    assert "error: max_new_tokens=1000000000: this model sees 256 positions, so at most 255" in text
    assert replies == 1 and session.settings.max_new_tokens == 2
