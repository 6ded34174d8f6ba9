"""Utility-preserving forgetting during SFT: forget the negative tokens while the positive tokens' CE may not rise.

After "Efficient Utility-Preserving Machine Unlearning with Implicit Gradient Surgery" (NeurIPS), applied to the
token partition: minimise a forget loss F on the negative tokens subject to the positive tokens' CE R not rising
(by more than eps in log per step), in the implicit form of `forgetune.unlearning.constrained`:

    loss = log F + w * log R,
    F = mean over negatives of forget-npo's bounded term -(2 / beta) * log sigmoid(beta * (CE - CE_base)) (> 0),
    R = mean CE over positives.

Why the logs: the gradient g_F / F + w * g_R / R is gradient surgery with the two directions weighted by the
losses' relative size, without the second backward pass explicit surgery needs; the forget pull fades as F -> 0
(the token is pushed below the base model) and the positive pull grows as R rises.

w is the dual variable of the constraint, updated before each call from the previous call's R (as
`ImplicitConstrained.__call__` does): w <- max(w0, w + eta * (log R_new - log R_prev - eps)). Unlike unlearning,
where w may fall to 0, the floor is the start weight w0: in SFT the positives must keep being learned, so their term
never drops below its initial weight, and w grows while the positive CE rises by more than eps per step.

Each call is one step of the dual update: with gradient accumulation, consecutive micro-batches. Calls without
gradient (evaluation) leave w alone. A batch without negatives has loss w * log R, one without positives log F.
"""

from __future__ import annotations

import torch

from forgetune.objectives import register
from forgetune.objectives.base import Objective, TokenBatch, masked_mean
from forgetune.objectives.npo import ForgetNPO
from forgetune.unlearning.constrained import ImplicitConstraint


@register("forget-constrained")
class ForgetConstrained(Objective):
    needs_partition = True
    needs_base_ce = True

    def __init__(self, weight: float = 1.0, eta: float = 5.0, eps: float = 0.0, beta: float = 0.1):
        self.constraint = ImplicitConstraint(weight=weight, eta=eta, eps=eps, min_weight=weight)
        self.npo = ForgetNPO(beta=beta)  # its per-token bounded negative term only
        self._previous_pos_ce: float | None = None

    @classmethod
    def from_config(cls, cfg) -> Objective:
        return cls(cfg.constraint_weight, cfg.constraint_eta, cfg.constraint_eps, beta=cfg.npo_beta)

    @property
    def weight(self) -> float:
        return self.constraint.weight

    def __call__(self, ce: torch.Tensor, tokens: TokenBatch, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        pos, neg = tokens.polarity == 1, tokens.polarity == -1
        has_pos, has_neg = bool(pos.any()), bool(neg.any())
        pos_ce = masked_mean(ce, pos)
        neg_term = masked_mean(self.npo.negative_term(ce, tokens), neg)
        if has_pos and torch.is_grad_enabled():
            current = pos_ce.item()
            if self._previous_pos_ce is not None and current > 0 and self._previous_pos_ce > 0:
                self.constraint.update(self._previous_pos_ce, current)
            self._previous_pos_ce = current
        if has_pos or has_neg:
            loss = self.constraint.loss(neg_term if has_neg else None, pos_ce if has_pos else None)
        else:
            loss = (ce * 0.0).sum()  # nothing scored: 0, still attached to the graph
        return loss, {
            "ce_pos": pos_ce.detach(),
            "ce_neg": masked_mean(ce.detach(), neg),
            "neg_term": neg_term.detach(),
            "constraint_weight": self.weight,
            "tokens_pos": pos.sum(),
            "tokens_neg": neg.sum(),
        }
