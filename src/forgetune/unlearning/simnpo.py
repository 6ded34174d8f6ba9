"""SimNPO (Fan et al., 2024, arXiv 2410.07163): NPO without a reference model, on the length-normalised NLL.

L_f = -(2 / beta) * mean_i log sigmoid(beta * (NLL_theta(y_i) / |y_i| - delta)),
i.e. the paper's -(2/beta) log sigmoid(-(beta/|y|) log pi_theta(y) - gamma) with gamma = beta * delta. Its gradient
w.r.t. NLL_theta is -(2 / |y|) * sigmoid(-beta * (NLL/|y| - delta)) < 0, so minimising raises the forget NLL;
length normalisation stops long responses from dominating. Plus `retain_weight` times the per-token retain NLL.
"""

from dataclasses import dataclass

import torch.nn.functional as F

from forgetune.settings import at_least, option
from forgetune.unlearning import register
from forgetune.unlearning.base import RetainSettings, UnlearnMethod, forget_sequences, sequence_mean


@dataclass
class SimNPOSettings(RetainSettings):
    beta: float = option(4.5, "Inverse temperature of SimNPO's log-sigmoid.")
    delta: float = option(0.0, "Margin subtracted from the length-normalised NLL (gamma / beta in the paper).")
    retain_weight: float = option(1.0, "Weight of the per-token retain NLL (0: none; open-unlearning's alpha).")

    def validate(self):
        super().validate()
        at_least("beta", self.beta, strict=True)


@register("simnpo")
class SimNPO(UnlearnMethod):
    Settings = SimNPOSettings
    forget_is_positive = True

    def forget_term(self, ce, tokens):
        nll, length = forget_sequences(ce, tokens)
        per_token = nll / length.clamp(min=1e-12)
        return -(2.0 / self.beta) * sequence_mean(F.logsigmoid(self.beta * (per_token - self.delta)), tokens)
