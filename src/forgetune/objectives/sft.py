"""Plain SFT: mean CE over every response token. The baseline, and how references are trained."""

from forgetune.objectives import register
from forgetune.objectives.base import Objective


@register("sft")
class SFT(Objective):
    def __call__(self, ce, tokens, progress):
        loss = ce.mean() if ce.numel() else ce.sum()
        return loss, {"ce": loss.detach()}
