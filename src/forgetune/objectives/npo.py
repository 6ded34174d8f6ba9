"""NPO-style bounded forgetting (Zhang et al., 2024, arXiv 2404.05868), per token, against the frozen base model.

Negative term per token: -(2 / beta) * log sigmoid(-beta * (log p_theta - log p_base))
                       = -(2 / beta) * log sigmoid(beta * (CE_theta - CE_base)).
It equals (2 / beta) * log 2 at the start (theta = base) and decays to 0 as the token is pushed below the base
probability, so it cannot diverge. CE_base comes from the scoring stage and travels in the batch: no second model.
The term is unlearning's `npo` (`forgetune.unlearning.npo.npo_loss`) with every negative token its own sequence.
"""

from forgetune.objectives import register
from forgetune.objectives.base import PositiveNegativeObjective
from forgetune.unlearning.npo import npo_loss


@register("forget-npo")
class ForgetNPO(PositiveNegativeObjective):
    needs_base_ce = True

    def __init__(self, lambda_min=0.0, lambda_max=0.25, negative_mean="negatives", beta=0.1):
        super().__init__(lambda_min, lambda_max, negative_mean)
        self.beta = beta

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.lambda_min, cfg.lambda_max, cfg.negative_mean, beta=cfg.npo_beta)

    def negative_term(self, ce, tokens):
        return npo_loss(ce, tokens.base_ce, self.beta)
