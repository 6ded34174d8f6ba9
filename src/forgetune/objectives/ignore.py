"""Ignore mode: learn the positive tokens only; negatives get no gradient at all."""

from forgetune.objectives import register
from forgetune.objectives.base import Objective, masked_mean


@register("ignore")
class Ignore(Objective):
    needs_partition = True
    exact_under_accumulation = True

    def __call__(self, ce, tokens, progress):
        pos = tokens.polarity == 1
        loss = masked_mean(ce, pos)
        metrics = {"ce_pos": loss.detach(), "tokens_pos": pos.sum()}
        return (loss if tokens.totals is None else masked_mean(ce, pos, tokens.count("positive"))), metrics
