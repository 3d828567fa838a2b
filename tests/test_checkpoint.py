"""Checkpoint I/O: the original .pt format both ways, the mambaft folder, and clear errors."""
import json
import shutil

import pytest
import torch

from mambaft.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mambaft.template import ChatTemplate


def test_original_checkpoint_loads_with_inferred_config(tiny_ckpt_path):
    model, info = load_checkpoint(tiny_ckpt_path)
    assert not model.training
    assert info.format == "original" and info.step == 757500 and info.epoch == 0
    assert info.inferred == {"d_conv": 4, "expand": 2, "d_state": 16, "dense_hidden_dim": 96}
    assert info.config.n_layers == 2 and info.config.max_seq_len == 128
    assert model.lm_head.weight is model.token_embedding.weight


def test_round_trip_original_folder_original_is_bit_identical(tiny_ckpt_path, tmp_path):
    original = torch.load(tiny_ckpt_path, weights_only=True)
    model, info = load_checkpoint(tiny_ckpt_path)
    folder = save_checkpoint(model, tmp_path / "folder", template=info.template, step=info.step)
    assert sorted(p.name for p in folder.iterdir()) == [
        "chat_template.json", "config.json", "manifest.json", "model.safetensors", "tokenizer.json"]   # issue 28: a manifest
    model2, info2 = load_checkpoint(folder)
    assert model2.lm_head.weight is model2.token_embedding.weight        # still tied
    back = save_checkpoint(model2, tmp_path / "back.pt", format="original", step=info2.step)
    saved = torch.load(back, weights_only=True)
    # the original's five keys, as saved; then every other argument of the original constructor
    # (so the user's MambaSWELU(**config) builds any size, tests/test_original_constructor.py)
    assert {k: saved["config"][k] for k in original["config"]} == original["config"]
    assert saved["config"] == model.config.original_config()
    assert saved["global_step"] == 757500 and isinstance(saved["global_step"], int)
    a, b = original["model_state_dict"], saved["model_state_dict"]
    assert list(a) == list(b)                                  # same 80-style key order
    for k in a:
        assert a[k].dtype == b[k].dtype == torch.float32
        assert torch.equal(a[k], b[k]), k
    # tied weights are one storage in the file, as the original writes them
    assert b["lm_head.weight"].data_ptr() == b["token_embedding.weight"].data_ptr()


def test_original_format_loads_strictly_into_a_plain_original_style_model(tiny_ckpt_path, tmp_path):
    """What the user's demo_chat.py does: rebuild from `config` and load_state_dict(strict=True)."""
    from mambaft.model import MambaSWELU, MambaSWELUConfig
    model, _ = load_checkpoint(tiny_ckpt_path)
    path = save_checkpoint(model, tmp_path / "m.pt", format="original", step=5)
    ckpt = torch.load(path, weights_only=True)
    # no size passed by hand any more (dense_hidden_dim=96 was needed while the config had 5 keys);
    # swelu_k only sets the original constructor's initial k
    fresh = MambaSWELU(MambaSWELUConfig(**{k: v for k, v in ckpt["config"].items() if k != "swelu_k"}))
    fresh.load_state_dict(ckpt["model_state_dict"], strict=True)


def test_folder_keeps_the_template_it_was_saved_with(tiny_model, tmp_path):
    custom = ChatTemplate(name="custom", user_prefix="Q: ", assistant_prefix="A:")
    save_checkpoint(tiny_model, tmp_path / "m", template=custom)
    _, info = load_checkpoint(tmp_path / "m")
    assert info.template == custom


def test_prefixes_are_stripped(tiny_ckpt_path, tmp_path):
    ckpt = torch.load(tiny_ckpt_path, weights_only=True)
    ckpt["model_state_dict"] = {"module._orig_mod." + k: v for k, v in ckpt["model_state_dict"].items()}
    torch.save(ckpt, tmp_path / "ddp.pt")
    model, info = load_checkpoint(tmp_path / "ddp.pt")
    assert len(info.notes) == 2


def test_bf16_folder_loads_as_fp32(tiny_model, tmp_path):
    save_checkpoint(tiny_model, tmp_path / "bf16", dtype=torch.bfloat16)
    model, _ = load_checkpoint(tmp_path / "bf16")
    w = model.token_embedding.weight
    assert w.dtype == torch.float32
    assert torch.equal(w, tiny_model.token_embedding.weight.to(torch.bfloat16).float())


# --- every bad-checkpoint case gives its clear error ------------------------------------------------
def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file(tiny_ckpt_path, tmp_path):
    data = tiny_ckpt_path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_checkpoint(tmp_path / "cut.pt")


def test_garbage_file(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot be read as a torch checkpoint"):
        load_checkpoint(tmp_path / "x.pt")


def test_directory_without_weights(tmp_path):
    (tmp_path / "final_model.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no model.safetensors.*final_model.pt"):
        load_checkpoint(tmp_path)


def test_truncated_safetensors(tiny_model, tmp_path):
    folder = save_checkpoint(tiny_model, tmp_path / "m")
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors: cannot be read"):
        load_checkpoint(folder)


def test_wrong_architecture(tmp_path):
    gpt2_like = {"transformer.wte.weight": torch.zeros(10, 4), "transformer.h.0.attn.c_attn.weight": torch.zeros(4, 12)}
    torch.save({"model_state_dict": gpt2_like}, tmp_path / "gpt2.pt")
    with pytest.raises(CheckpointError, match="not a MambaSWELU checkpoint"):
        load_checkpoint(tmp_path / "gpt2.pt")


def test_missing_and_unexpected_keys_are_named(tiny_ckpt_path, tmp_path):
    ckpt = torch.load(tiny_ckpt_path, weights_only=True)
    sd = ckpt["model_state_dict"]
    del sd["dense2.bias"]
    sd["dense9.weight"] = torch.zeros(3)
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): dense2.bias.*unexpected keys \(1\): dense9.weight"):
        load_checkpoint(tmp_path / "bad.pt")


def test_shape_mismatch_is_named(tiny_ckpt_path, tmp_path):
    ckpt = torch.load(tiny_ckpt_path, weights_only=True)
    ckpt["model_state_dict"]["dense2.weight"] = torch.zeros(96, 95)
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"dense2.weight: file \(96, 95\) vs model \(96, 96\)"):
        load_checkpoint(tmp_path / "bad.pt")


def test_saved_config_contradicting_weights(tiny_ckpt_path, tmp_path):
    ckpt = torch.load(tiny_ckpt_path, weights_only=True)
    ckpt["config"]["d_model"] = 128
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="saved config says d_model=128 but the weights have d_model=64"):
        load_checkpoint(tmp_path / "bad.pt")


def test_lam_keys_refused_unless_formula_named(tiny_ckpt_path, tmp_path):
    from tests.conftest import lam_checkpoint
    lam_checkpoint(tiny_ckpt_path, tmp_path / "lam.pt", 1.5)
    with pytest.raises(CheckpointError, match="`lam` keys.*'outer'.*'inner'"):
        load_checkpoint(tmp_path / "lam.pt")
    model, info = load_checkpoint(tmp_path / "lam.pt", lam_formula="outer")
    assert info.config.swelu_lam_formula == "outer"
    plain, _ = load_checkpoint(tiny_ckpt_path)
    ids = torch.randint(0, 512, (1, 16))
    with torch.no_grad():
        assert not torch.allclose(model(ids)["logits"], plain(ids)["logits"])  # lam = 1.5 is applied


def test_folder_with_bad_config(tiny_model, tmp_path):
    folder = save_checkpoint(tiny_model, tmp_path / "m")
    meta = json.loads((folder / "config.json").read_text())
    meta["model"]["d_model"] = 32
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(folder)


def test_interrupted_folder_write_leaves_old_checkpoint(tiny_model, tmp_path, monkeypatch):
    folder = save_checkpoint(tiny_model, tmp_path / "m", step=1)
    import mambaft.checkpoint as ck

    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(ck.DEFAULT_TEMPLATE.__class__, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tiny_model, folder, step=2)
    _, info = load_checkpoint(folder)
    assert info.step == 1
    assert [p.name for p in tmp_path.iterdir()] == ["m"]      # no temp leftovers
