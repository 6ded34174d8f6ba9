"""Negative Preference Optimization (Zhang et al., 2024, arXiv 2404.05868), per forget sequence.

L_f = -(2 / beta) * mean_i log sigmoid(-beta * log(pi_theta(y_i) / pi_ref(y_i)))
    = -(2 / beta) * mean_i log sigmoid(beta * (NLL_theta(y_i) - NLL_ref(y_i))),   NLL = summed over the response.
It is (2 / beta) * log 2 at theta = ref, its gradient w.r.t. NLL_theta is -2 * sigmoid(-beta * diff) < 0 (so
minimising raises the forget NLL), and it decays to 0 as the forget data falls below the reference: bounded,
unlike GA. Plus `retain_weight` times the per-token retain NLL.

`npo_loss` is the term itself, written once: the SFT objective `forget-npo` applies it to each negative token.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from forgetune.settings import at_least, option
from forgetune.unlearning import register
from forgetune.unlearning.base import RetainSettings, UnlearnMethod, forget_base_nll, forget_sequences, sequence_mean


def npo_loss(nll: torch.Tensor, ref_nll: torch.Tensor, beta: float,
             reduce: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> torch.Tensor:
    """-(2 / beta) * reduce(log sigmoid(beta * (nll - ref_nll))): elementwise by default, a mean per batch."""
    return -(2.0 / beta) * reduce(F.logsigmoid(beta * (nll - ref_nll)))


@dataclass
class NPOSettings(RetainSettings):
    beta: float = option(0.1, "Inverse temperature of NPO's log-sigmoid (the paper's 0.1).")
    retain_weight: float = option(1.0, "Weight of the per-token retain NLL (0: none; open-unlearning's alpha).")

    def validate(self):
        super().validate()
        at_least("beta", self.beta, strict=True)


@register("npo")
class NPO(UnlearnMethod):
    Settings = NPOSettings
    forget_is_positive = True

    def forget_term(self, ce, tokens):
        ref = forget_base_nll(ce, tokens, "npo")
        return npo_loss(forget_sequences(ce, tokens)[0], ref, self.beta, lambda x: sequence_mean(x, tokens))
