"""NPO-style bounded forgetting (Zhang et al., 2024, arXiv 2404.05868), per token, against the frozen base model.

Negative term per token: -(2 / beta) * log sigmoid(-beta * (log p_theta - log p_base))
                       = -(2 / beta) * log sigmoid(beta * (CE_theta - CE_base)).
It equals (2 / beta) * log 2 at the start (theta = base) and decays to 0 as the token is pushed below the base
probability, so it cannot diverge. CE_base comes from the scoring stage and travels in the batch: no second model.
The term is unlearning's `npo` (`forgetune.unlearning.npo.npo_loss`) with every negative token its own sequence.
"""

from dataclasses import dataclass

from forgetune.objectives import register
from forgetune.objectives.base import PositiveNegativeObjective, PositiveNegativeSettings
from forgetune.settings import at_least, option
from forgetune.unlearning.npo import npo_loss


@dataclass
class NPOSettings(PositiveNegativeSettings):
    npo_beta: float = option(0.1, "Inverse temperature of the NPO-style negative term.")

    def validate(self):
        super().validate()
        at_least("npo_beta", self.npo_beta, strict=True)


@register("forget-npo")
class ForgetNPO(PositiveNegativeObjective):
    Settings = NPOSettings
    needs_base_ce = True

    def negative_term(self, ce, tokens):
        return npo_loss(ce, tokens.base_ce, self.npo_beta)
