"""What every unlearning method receives: the SFT objectives' flat per-token tensors (`objectives.base.TokenBatch`).

Unlearning is forgetting where a token's polarity comes from the set its example belongs to: -1 on the forget set's
response tokens, +1 on the retain set's (with `--tokens scored`, a forget example's unselected tokens are +1 too:
kept like retain data). `base_ce` is the starting model's CE (NPO's frozen reference, scored once up front) and `seq`
the row each token belongs to, so sequence-level losses (NPO, SimNPO) form their per-sequence sums from it and token
means (GA, GradDiff) need nothing more.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from forgetune.objectives.base import Objective, TokenBatch


def forget_sequences(ce: torch.Tensor, tokens: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL, token count) of each sequence's forget tokens, for the sequences that have any."""
    forget = tokens.polarity == -1
    if not bool(forget.any()):
        raise ValueError("the batch has no forget token")
    return tokens.sequence_sums(ce, forget)


def forget_base_nll(ce: torch.Tensor, tokens: TokenBatch, method: str) -> torch.Tensor:
    """Summed NLL of each forget sequence's forget tokens under the frozen starting model (no graph)."""
    if tokens.base_ce is None:
        raise ValueError(f"{method} needs base_ce: the forget tokens' CE under the starting model")
    return tokens.sequence_sums(tokens.base_ce.to(ce).detach(), tokens.polarity == -1)[0]


def forget_mean(ce: torch.Tensor, tokens: TokenBatch) -> torch.Tensor:
    """Per-token forget NLL: the batch's forget tokens' summed CE over their count (the accumulated batch's, when
    given)."""
    nll, length = forget_sequences(ce, tokens)
    return token_mean(nll, length) if tokens.totals is None else nll.sum() / tokens.count("negative").clamp(min=1)


def retain_mean(ce: torch.Tensor, tokens: TokenBatch) -> torch.Tensor:
    """Per-token retain NLL (the usual SFT loss on the retain tokens)."""
    retain = tokens.polarity == 1
    if not bool(retain.any()):
        raise ValueError("this method has a retain term (retain_weight != 0) but the batch has no retain token; "
                         "pass retain data or retain_weight=0")
    nll, length = tokens.sequence_sums(ce, retain)
    return token_mean(nll, length) if tokens.totals is None else nll.sum() / tokens.count("positive").clamp(min=1)


def sequence_mean(values: torch.Tensor, tokens: TokenBatch) -> torch.Tensor:
    """Mean of per-forget-sequence values (over the accumulated batch's forget sequences, when given)."""
    return values.mean() if tokens.totals is None else values.sum() / tokens.count("forget_sequences").clamp(min=1)


def has_retain(tokens: TokenBatch) -> bool:
    return bool((tokens.polarity == 1).any())


def token_mean(nll: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Sum of the sequences' NLL over their total token count: the per-token mean of the whole batch."""
    return nll.sum() / length.sum().clamp(min=1e-12)


class UnlearnMethod(Objective):
    """Forget term + `retain_weight` * per-token retain NLL.

    forget_is_positive: the forget term is > 0 and reaches 0 only when forgetting is complete (NPO, SimNPO);
    `constrained` needs that, since it takes the forget term's log. GA's -NLL is not.
    """

    forget_is_positive: ClassVar[bool] = False
    exact_under_accumulation = True

    def __init__(self, retain_weight: float = 0.0):
        self.retain_weight = retain_weight

    def forget_term(self, ce: torch.Tensor, tokens: TokenBatch) -> torch.Tensor:
        """Scalar to minimise on the forget tokens; minimising it must push their NLL up."""
        raise NotImplementedError

    def __call__(self, ce: torch.Tensor, tokens: TokenBatch,
                 progress: float = 0.0) -> tuple[torch.Tensor, dict[str, Any]]:
        forget = self.forget_term(ce, tokens)
        loss = forget
        if self.retain_weight:
            loss = loss + self.retain_weight * retain_mean(ce, tokens)
        if tokens.totals is not None:  # the logged numbers: this micro-batch's own means, not its share of the step's
            return loss, self(ce.detach(), dataclasses.replace(tokens, totals=None), progress)[1]
        metrics = {"forget_term": forget.detach(), "forget_nll": forget_mean(ce, tokens).detach()}
        if has_retain(tokens):
            metrics["retain_nll"] = retain_mean(ce, tokens).detach()
        metrics["loss"] = loss.detach()
        return loss, metrics
