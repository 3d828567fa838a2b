"""The MambaSWELU model layer: the as-trained architecture, its loss, and its facts."""
from .kernels.loss import linear_cross_entropy
from .mambaswelu import (DecodeState, MambaSWELU, MambaSWELUConfig, count_parameters,
                         model_facts)
from .kernels.swelu import LAM_FORMULAS, SWELU, swelu


def upgrade_to_selective(model, ssm_state: int = 16):
    """The context repair: `model` plus a gated selective-scan path, same outputs at init
    (see mambaft.model.selective)."""
    from .selective import upgrade_to_selective as _upgrade
    return _upgrade(model, ssm_state=ssm_state)


def build_model(cfg: MambaSWELUConfig):
    """A fresh model for a config: the as-trained architecture, or the selective-scan upgrade."""
    if cfg.architecture == "original":
        return MambaSWELU(cfg)
    if cfg.architecture == "selective":
        from .selective import build_selective  # the context repair (optional module)
        return build_selective(cfg)
    raise ValueError(f"architecture={cfg.architecture!r}: expected 'original' or 'selective'")


__all__ = ["MambaSWELU", "MambaSWELUConfig", "DecodeState", "SWELU", "swelu", "LAM_FORMULAS",
           "linear_cross_entropy", "count_parameters", "model_facts", "build_model",
           "upgrade_to_selective"]
