"""Plain SFT: mean CE over every response token. The baseline, and how references are trained."""

from forgetune.objectives import register
from forgetune.objectives.base import Objective


@register("sft")
class SFT(Objective):
    exact_under_accumulation = True

    def __call__(self, ce, tokens, progress):
        loss = ce.mean() if ce.numel() else ce.sum()
        if tokens.totals is None:
            return loss, {"ce": loss.detach()}
        return ce.sum() / tokens.count("tokens").clamp(min=1), {"ce": loss.detach()}
