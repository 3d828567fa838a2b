"""The SWELU of the user's commit 049fe10 (a learnable scale `lam`) is supported exactly, by name:

    sign(z) * lam_e * (1 - exp(-(|z| / lam_e + 1e-8) ** k_e)),   lam_e = |lam| + 1e-6,  k_e = |k| + 1e-6

(read from that commit's src/swelu.py). Neither earlier `lam_formula` computes it, so a checkpoint
that has `lam` keys never loads without one being named, and "scaled" gives 049fe10's numbers."""
from __future__ import annotations

import pytest
import torch

from mambaft.checkpoint import CheckpointError, load_checkpoint
from mambaft.model import LAM_FORMULAS, swelu


def _049fe10(z, k, lam):
    """The formula above, written out here in float64."""
    k_e, lam_e = abs(k) + 1e-6, abs(lam) + 1e-6
    return torch.sign(z) * lam_e * (1 - torch.exp(-((z.abs() / lam_e + 1e-8) ** k_e)))


def test_scaled_is_049fe10s_formula_and_the_others_are_not():
    z = torch.linspace(-6, 6, 2001, dtype=torch.float64)
    k, lam = torch.tensor(0.45, dtype=torch.float64), torch.tensor(-2.5, dtype=torch.float64)
    want = _049fe10(z, 0.45, -2.5)
    # fp64 both sides, other op order: a few ulps of values <= 2.5 (~1e-15); 1e-12 leaves room
    torch.testing.assert_close(swelu(z, k, lam, "scaled"), want, atol=1e-12, rtol=0)
    for other in set(LAM_FORMULAS) - {"scaled"}:
        assert (swelu(z, k, lam, other) - want).abs().max() > 0.5       # silently wrong, were it chosen


def test_a_049fe10_checkpoint_loads_only_by_name_and_gives_its_numbers(tiny_ckpt_path, tmp_path):
    from tests.conftest import lam_checkpoint
    lam_checkpoint(tiny_ckpt_path, tmp_path / "lam.pt", 0.6)
    with pytest.raises(CheckpointError, match="'scaled': .*049fe10"):
        load_checkpoint(tmp_path / "lam.pt")
    model, info = load_checkpoint(tmp_path / "lam.pt", lam_formula="scaled")
    assert info.config.swelu_lam_formula == "scaled"
    z = torch.randn(4, 64, dtype=torch.float64) * 3
    act = model.swelu1.double()
    with torch.no_grad():   # (the stored lam is 0.6 rounded to fp32: compare with that value)
        torch.testing.assert_close(act(z), _049fe10(z, float(act.k), float(act.lam)), atol=1e-12, rtol=0)
