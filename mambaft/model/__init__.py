"""The MambaSWELU model layer: the as-trained architecture, its loss, and its facts."""
from .loss import linear_cross_entropy
from .mambaswelu import (DecodeState, MambaSWELU, MambaSWELUConfig, count_parameters,
                         model_facts)
from .swelu import LAM_FORMULAS, SWELU, swelu

__all__ = ["MambaSWELU", "MambaSWELUConfig", "DecodeState", "SWELU", "swelu", "LAM_FORMULAS",
           "linear_cross_entropy", "count_parameters", "model_facts"]
