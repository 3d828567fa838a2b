"""The user's own code loads what mambaft saves in the original format: their demo_chat.py builds
`MambaSWELU(**checkpoint["config"])` (Powwpol/SWELU_LLM, src/model.py at 5c61e3d) and strict-loads
`model_state_dict`. `UserMambaSWELU` below re-implements that constructor's signature and the shapes
it builds (written here from the original's documented structure, not copied), so the test needs
neither their repository nor mamba-ssm."""
from __future__ import annotations

import torch
from torch import nn

from mambaft.checkpoint import load_checkpoint, save_checkpoint
from mambaft.course import DEMO_BASE
from mambaft.model import MambaSWELU, MambaSWELUConfig


class _Swelu(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(float(k)))


class _Mixer(nn.Module):      # mamba_block.py's fallback mixer: the shapes of every parameter
    def __init__(self, d_model, d_state, d_conv, expand, k):
        super().__init__()
        E = expand * d_model
        self.in_proj = nn.Linear(d_model, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, d_conv, groups=E, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(E, d_state, bias=False)
        self.dt_proj = nn.Linear(E, E, bias=True)
        self.ssm_activation = _Swelu(k)
        self.out_proj = nn.Linear(E, d_model, bias=False)


class _Block(nn.Module):
    def __init__(self, d_model, d_state, d_conv, expand, k):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.mamba = _Mixer(d_model, d_state, d_conv, expand, k)
        self.activation = _Swelu(k)


class _Stack(nn.Module):
    def __init__(self, num_layers, d_model, d_state, d_conv, expand, k):
        super().__init__()
        self.layers = nn.ModuleList(_Block(d_model, d_state, d_conv, expand, k) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)


class UserMambaSWELU(nn.Module):
    """The original constructor's keyword arguments and defaults; unknown keys raise TypeError."""

    def __init__(self, vocab_size=50257, d_model=1024, n_layers=6, d_state=16, d_conv=4, expand=2,
                 max_seq_len=2048, dense_hidden_dim=2048, swelu_k=1.0, dropout=0.1, tie_embeddings=True):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(max_seq_len, d_model)
        self.mamba_stack = _Stack(n_layers, d_model, d_state, d_conv, expand, swelu_k)
        self.dense1, self.swelu1 = nn.Linear(d_model, dense_hidden_dim), _Swelu(swelu_k)
        self.dense2, self.swelu2 = nn.Linear(dense_hidden_dim, dense_hidden_dim), _Swelu(swelu_k)
        self.dense3, self.swelu3 = nn.Linear(dense_hidden_dim, d_model), _Swelu(swelu_k)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight


def test_the_users_constructor_strict_loads_a_saved_demo_model(tmp_path):
    """Before: the saved config had 5 keys, the constructor's defaults filled the rest, and the strict
    load failed with `size mismatch for dense1.weight` (2048 x 1024 against 256 x 128)."""
    model, _ = load_checkpoint(DEMO_BASE)
    path = save_checkpoint(model, tmp_path / "demo.pt", "original")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    user = UserMambaSWELU(**ckpt["config"])
    user.load_state_dict(ckpt["model_state_dict"], strict=True)
    assert torch.equal(user.dense1.weight, model.dense1.weight)


def test_the_users_constructor_builds_every_mambaft_size():
    """The 124M default and other sizes: the user's model built from the config we save has exactly
    mambaft's keys and shapes (what a strict load checks); built on the meta device, no memory."""
    for cfg in (MambaSWELUConfig(), MambaSWELUConfig(d_model=96, n_layers=3, d_conv=3, expand=3, d_state=8,
                                                      dense_hidden_dim=160, max_seq_len=300, vocab_size=1000)):
        with torch.device("meta"):
            ours = MambaSWELU(cfg).state_dict()
            theirs = UserMambaSWELU(**cfg.original_config()).state_dict()
        assert {k: tuple(v.shape) for k, v in theirs.items()} == {k: tuple(v.shape) for k, v in ours.items()}
