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

from dataclasses import dataclass

import torch

from forgetune.objectives import register
from forgetune.objectives.base import Objective, TokenBatch, masked_mean
from forgetune.settings import Settings, at_least, option
from forgetune.unlearning.constrained import ImplicitConstraint
from forgetune.unlearning.npo import npo_loss


@dataclass
class ConstrainedSettings(Settings):
    constraint_weight: float = option(
        1.0, "Starting (and minimum) weight w0 of log(positive CE) in log(F) + w * log(pos. CE)."
    )
    constraint_eta: float = option(
        5.0, "Dual step size; w grows by eta per unit rise of log(positive CE) beyond eps."
    )
    constraint_eps: float = option(0.0, "Allowed rise of log(positive CE) per step before w grows (0: none).")
    npo_beta: float = option(0.1, "Inverse temperature of the NPO-style negative term.")

    def validate(self):
        for name in ("constraint_weight", "constraint_eta", "constraint_eps"):
            at_least(name, getattr(self, name))
        at_least("npo_beta", self.npo_beta, strict=True)


@register("forget-constrained")
class ForgetConstrained(Objective):
    Settings = ConstrainedSettings
    needs_partition = True
    needs_base_ce = True

    def setup(self):
        self.constraint = ImplicitConstraint(weight=self.constraint_weight, eta=self.constraint_eta,
                                             eps=self.constraint_eps, min_weight=self.constraint_weight)
        self._previous_pos_ce: float | None = None

    @property
    def weight(self) -> float:
        """The dual weight w now."""
        return self.constraint.weight

    def __call__(self, ce: torch.Tensor, tokens: TokenBatch, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        pos, neg = tokens.polarity == 1, tokens.polarity == -1
        has_pos, has_neg = bool(pos.any()), bool(neg.any())
        pos_ce = masked_mean(ce, pos)
        neg_term = masked_mean(npo_loss(ce, tokens.base_ce, self.npo_beta), neg)
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
