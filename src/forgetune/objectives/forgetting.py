"""The paper's objective (arXiv 2508.04329): CE(positives) - lambda(t) * CE(negatives).

Unbounded below: -CE grows without limit as p(token) -> 0, so gradient clipping (max_grad_norm) must stay on.
"""

from forgetune.objectives import register
from forgetune.objectives.base import PositiveNegativeObjective


@register("forget")
class Forget(PositiveNegativeObjective):
    def negative_term(self, ce, tokens):
        return -ce
