"""SatImp (Yang et al., 2025, "Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning"; open-unlearning's
SatImp): gradient ascent whose per-token terms are weighted by saturation times importance, constants of the token's
probability p_t = exp(-CE_t) (no gradient flows through the weight):
    L_f = -mean over forget tokens of p_t^beta1 * (1 - p_t)^beta2 * CE_t.
Saturation p^beta1 (WGA's weight) stops pushing tokens already forgotten; importance (1 - p)^beta2 spares the tokens
the model is sure of (common words, format), which carry little of what the forget set specifically taught.
beta2 = 0 is WGA with beta = beta1. Plus `retain_weight` (open-unlearning's alpha) times the per-token retain NLL.
"""

from dataclasses import dataclass

import torch

from forgetune.settings import at_least, option
from forgetune.unlearning import register
from forgetune.unlearning.base import RetainSettings, UnlearnMethod, weighted_ascent


@dataclass
class SatImpSettings(RetainSettings):  # open-unlearning's defaults (beta1, beta2, alpha)
    beta1: float = option(5.0, "Exponent of the saturation weight p^beta1.")
    beta2: float = option(1.0, "Exponent of the importance weight (1 - p)^beta2 (0: WGA).")
    retain_weight: float = option(0.1, "Weight of the per-token retain NLL (open-unlearning's alpha).")

    def validate(self):
        super().validate()
        at_least("beta1", self.beta1)
        at_least("beta2", self.beta2)


@register("satimp")
class SatImp(UnlearnMethod):
    Settings = SatImpSettings

    def forget_term(self, ce, tokens):
        p = torch.exp(-ce)
        return weighted_ascent(ce, tokens, p**self.beta1 * (1 - p) ** self.beta2)
