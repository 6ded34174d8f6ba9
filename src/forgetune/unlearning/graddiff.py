"""Gradient difference: ascent on the forget set plus descent on the retain set, -L_f + w_r * L_r (both per-token
NLL means). The retain term anchors the model's utility while GA pushes the forget data away."""

from dataclasses import dataclass

from forgetune.settings import option
from forgetune.unlearning import register
from forgetune.unlearning.base import RetainSettings, UnlearnMethod, forget_mean


@dataclass
class GradDiffSettings(RetainSettings):
    retain_weight: float = option(1.0, "Weight of the per-token retain NLL (0: none; open-unlearning's alpha).")


@register("graddiff")
class GradDiff(UnlearnMethod):
    Settings = GradDiffSettings

    def forget_term(self, ce, tokens):
        return -forget_mean(ce, tokens)
