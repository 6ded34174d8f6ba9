"""Gradient difference: ascent on the forget set plus descent on the retain set, -L_f + w_r * L_r (both per-token
NLL means). The retain term anchors the model's utility while GA pushes the forget data away."""

from forgetune.unlearning import register
from forgetune.unlearning.base import UnlearnMethod, forget_mean


@register("graddiff")
class GradDiff(UnlearnMethod):
    def __init__(self, retain_weight: float = 1.0):  # 1.0: open-unlearning's default (alpha)
        super().__init__(retain_weight)

    def forget_term(self, ce, tokens):
        return -forget_mean(ce, tokens)
