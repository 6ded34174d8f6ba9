"""Weighted gradient ascent (WGA; Wang et al., 2025, "Rethinking LLM Unlearning Objectives: A Gradient Perspective
and Go Beyond"; open-unlearning's WGA): gradient ascent whose per-token terms are weighted by the token's probability
to the power beta, a constant (no gradient flows through the weight):

    L_f = -mean over forget tokens of p_t^beta * CE_t,   p_t^beta = exp(-beta * CE_t).

A token the model already finds unlikely weighs little, so ascent stops pushing what is already forgotten and does not
run away the way plain GA does; beta = 0 is GA. Plus `retain_weight` (open-unlearning's alpha) times the per-token
retain NLL.
"""

from dataclasses import dataclass

import torch

from forgetune.settings import at_least, option
from forgetune.unlearning import register
from forgetune.unlearning.base import RetainSettings, UnlearnMethod, weighted_ascent


@dataclass
class WGASettings(RetainSettings):  # open-unlearning's defaults (beta, alpha)
    beta: float = option(1.0, "Exponent of the token weight p^beta (0: plain gradient ascent).")
    retain_weight: float = option(1.0, "Weight of the per-token retain NLL (0: none; open-unlearning's alpha).")

    def validate(self):
        super().validate()
        at_least("beta", self.beta)


@register("wga")
class WGA(UnlearnMethod):
    Settings = WGASettings

    def forget_term(self, ce, tokens):
        return weighted_ascent(ce, tokens, torch.exp(-self.beta * ce))
