"""SimNPO (Fan et al., 2024, arXiv 2410.07163): NPO without a reference model, on the length-normalised NLL.

L_f = -(2 / beta) * mean_i log sigmoid(beta * (NLL_theta(y_i) / |y_i| - delta)),
i.e. the paper's -(2/beta) log sigmoid(-(beta/|y|) log pi_theta(y) - gamma) with gamma = beta * delta. Its gradient
w.r.t. NLL_theta is -(2 / |y|) * sigmoid(-beta * (NLL/|y| - delta)) < 0, so minimising raises the forget NLL;
length normalisation stops long responses from dominating. Plus `retain_weight` times the per-token retain NLL.
"""

import torch.nn.functional as F

from forgetune.unlearning import register
from forgetune.unlearning.base import UnlearnMethod, forget_sequences, sequence_mean


@register("simnpo")
class SimNPO(UnlearnMethod):
    forget_is_positive = True

    def __init__(self, beta: float = 4.5, delta: float = 0.0, retain_weight: float = 1.0):  # the defaults
        super().__init__(retain_weight)
        if beta <= 0:
            raise ValueError(f"simnpo beta must be > 0, got {beta}")
        self.beta, self.delta = beta, delta

    def forget_term(self, ce, tokens):
        nll, length = forget_sequences(ce, tokens)
        per_token = nll / length.clamp(min=1e-12)
        return -(2.0 / self.beta) * sequence_mean(F.logsigmoid(self.beta * (per_token - self.delta)), tokens)
