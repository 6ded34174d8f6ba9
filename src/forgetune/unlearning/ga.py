"""Gradient ascent on the forget set: loss = -(per-token forget NLL). The simplest baseline, and unbounded: with
nothing holding it, the forget NLL (and the retain NLL with it) can grow without limit, hence GradDiff and NPO."""

from forgetune.unlearning import register
from forgetune.unlearning.base import UnlearnMethod, forget_mean


@register("ga")
class GradientAscent(UnlearnMethod):
    def forget_term(self, ce, tokens):
        return -forget_mean(ce, tokens)
