"""Bounded forgetting with unlikelihood (Welleck et al., 2019): CE(positives) + lambda(t) * -log(1 - p(negatives)).

The term is >= 0 and goes to 0 as p -> 0, so pushing a token down cannot diverge; p is clamped below 1 - 1e-6.
"""

import torch

from forgetune.objectives import register
from forgetune.objectives.base import PositiveNegativeObjective

MIN_ONE_MINUS_P = 1e-6


@register("forget-unlikelihood")
class ForgetUnlikelihood(PositiveNegativeObjective):
    def negative_term(self, ce, tokens):
        one_minus_p = -torch.expm1(-ce)  # 1 - exp(-ce), exact near p = 1
        return -torch.log(one_minus_p.clamp(min=MIN_ONE_MINUS_P))
