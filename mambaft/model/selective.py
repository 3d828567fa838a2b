"""The context repair: MambaSWELU plus a real Mamba selective state-space path, function-preserving.

The as-trained mixer sees K-1 = 3 earlier tokens; six blocks see 19 (../shared/docs/mambaswelu.md).
The upgrade adds, inside every mixer, the selective scan that mamba-ssm would have run, behind a
per-channel gate that starts at zero, so at initialization the upgraded model computes exactly
(bit for bit in fp32) what the original computes, and training opens the long-range path.

Glossary (code name -> Mamba paper symbol), beyond mambaswelu.py's:
    N            ssm_state (16): state size per channel
    R            dt_rank = ceil(D / 16) (Mamba's rule): rank of the step-size projection
    a            [B, L, E] SWELU_s(conv(x)): the original gated branch AND the scan input u
                 (Mamba feeds its scan the activated conv output; SWELU_s is this model's activation)
    dbc_proj     Linear E -> R + 2N: [delta_r, B_t, C_t] = dbc_proj(a)    (Mamba's x_proj)
    delta_proj   Linear R -> E (bias): Delta_t = softplus(delta_proj(delta_r))  (Mamba's dt_proj)
    A_log        [E, N]: A = -exp(A_log), initialised to -(1..N) per channel (S4D-real)
    D            [E]: skip term, init 1
    gate         [E]: per-channel gate g, init 0
    y            [B, L, E] scan output (kernels/scan.py): h_t = exp(Delta_t A) h_{t-1} + Delta_t a_t B_t,
                 y_t = C_t . h_t + D a_t

Mixer:  original  out_proj(a * sigmoid(z))
        upgraded  out_proj((a + g * y) * sigmoid(z))
With g = 0 the sum is a + 0 = a exactly. d out/d g = y * sigmoid(z) (through out_proj) is not zero,
so the gate gets a gradient at initialization; the scan's own parameters get theirs once g != 0
(zero at step 0, as with LoRA's zero-initialised B). AdamW moves each gate channel by about lr per
step whatever the gradient's scale, so a higher learning rate for the new parameters
(`new_parameter_names`) opens the path sooner.

Deliberate decisions (read before changing):
    * The dead `x_proj` (E -> 16) and `dt_proj` (E -> E) are NOT reused. They hold untrained random
      values (nothing learned to keep), their shapes do not fit Mamba (x_proj would need R + 2N = 96
      outputs at the 124M size, and a full-rank E x E delta projection is 4.2M parameters where the
      low-rank one is R x E + E = 133k), and they are part of the original key set: leaving them
      untouched makes the upgraded state dict exactly "original keys + `.selective.` keys", so the
      original weights load into it unchanged and `freeze_dead()` still takes them out of training.
      The new modules carry different names (`dbc_proj`, `delta_proj`) so `dead_parameters()` (which
      matches `x_proj`/`dt_proj`) never freezes them. Cost: 25.4M frozen parameters stay in memory.
    * The scan runs in fp32 (exp of Delta*A over 1024 steps), also under autocast, like SWELU.
    * Past max_seq_len: the original crops its input and restarts positions at 0, which a recurrent
      state cannot reproduce in O(1) (it would rescan the last 1024 tokens per token). The upgraded
      model keeps its recurrent state over the whole conversation and clamps the position at
      max_seq_len-1 (the last learned position): `prefill`/`step` equal the full forward run with
      positions min(t, max_seq_len-1) (see `features(ids, positions=...)`). Training rows stay
      <= max_seq_len, as before.
    * `save_checkpoint(format="original")` refuses a selective model: the original code has no
      selective path and its strict load would fail on the `.selective.` keys.

    model = upgrade_to_selective(load_checkpoint("final_model.pt")[0])      # then train as usual
"""
from __future__ import annotations

from dataclasses import replace

from .mambaswelu import MambaSWELU, MambaSWELUConfig
from .ssm import SELECTIVE_KEY, SelectiveSSM, dt_rank  # noqa: F401 - the selective path's parts, named here too


class SelectiveMambaSWELU(MambaSWELU):
    """A MambaSWELU whose config says architecture="selective". Nothing is overridden: the model
    picks its mixers by architecture (`SimplifiedMamba.selective`) and decodes with one
    `prefill`/`step`; this type is what `upgrade_to_selective` and `load_checkpoint` return."""

    def __init__(self, cfg: MambaSWELUConfig):
        if cfg.architecture != "selective":
            raise ValueError(f"architecture={cfg.architecture!r}: SelectiveMambaSWELU needs 'selective'")
        super().__init__(cfg)


def build_selective(cfg: MambaSWELUConfig) -> SelectiveMambaSWELU:
    """A fresh selective model for a config with architecture="selective" (used by load_checkpoint)."""
    return SelectiveMambaSWELU(cfg)


def upgrade_to_selective(model: MambaSWELU, ssm_state: int = 16) -> SelectiveMambaSWELU:
    """A new model that computes exactly what `model` computes, plus a closed selective path.

    Every original weight is copied (the input model is left untouched); the new `.selective.`
    parameters get Mamba's initialisation with gate = 0. Device, dtype, train/eval mode and
    requires_grad flags (e.g. `freeze_dead()`) carry over."""
    cfg = model.config
    if cfg.architecture != "original":
        raise ValueError(f"model architecture is {cfg.architecture!r}: only an 'original' model can be "
                         "upgraded")
    if ssm_state <= 0:
        raise ValueError(f"ssm_state={ssm_state}: must be > 0")
    new = SelectiveMambaSWELU(replace(cfg, architecture="selective", ssm_state=int(ssm_state)))
    ref = model.token_embedding.weight
    new.to(device=ref.device, dtype=ref.dtype)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    wrong = [k for k in missing if SELECTIVE_KEY not in k]
    if unexpected or wrong:
        raise ValueError(f"upgrade_to_selective: the model's keys do not match MambaSWELU "
                         f"(unexpected {unexpected[:5]}, missing {wrong[:5]})")
    flags = dict(model.named_parameters())
    for name, p in new.named_parameters():
        if name in flags:
            p.requires_grad_(flags[name].requires_grad)
    return new.train(model.training)
