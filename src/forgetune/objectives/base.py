"""What every objective receives: per-token CE of the response tokens and their per-token labels, all flat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from forgetune.config import TrainConfig
from forgetune.schedules import linear_ramp


@dataclass
class TokenBatch:
    """Flat (N,) tensors aligned with the CE vector: one entry per response token of the batch."""

    polarity: torch.Tensor | None = None  # +1 positive, -1 negative, 0 ignored (from the partition)
    base_ce: torch.Tensor | None = None  # CE of the frozen base model on the same token (from scoring)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked entries; 0 (still attached to the graph) when none is selected."""
    count = mask.sum()
    return (values * mask).sum() / count.clamp(min=1)


class Objective:
    """Base class: `__call__(ce, tokens, progress) -> (loss, metrics)`; progress = step / total steps in [0, 1]."""

    name: ClassVar[str] = ""
    needs_partition: ClassVar[bool] = False
    needs_base_ce: ClassVar[bool] = False

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Objective:
        return cls()

    def __call__(self, ce: torch.Tensor, tokens: TokenBatch, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


class PositiveNegativeObjective(Objective):
    """Mean CE over positives plus lambda(t) times a negative term; subclasses define the negative term."""

    needs_partition = True

    def __init__(self, lambda_min: float = 0.0, lambda_max: float = 0.25, negative_mean: str = "negatives"):
        self.lambda_min, self.lambda_max, self.negative_mean = lambda_min, lambda_max, negative_mean

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Objective:
        return cls(lambda_min=cfg.lambda_min, lambda_max=cfg.lambda_max, negative_mean=cfg.negative_mean)

    def negative_term(self, ce: torch.Tensor, tokens: TokenBatch) -> torch.Tensor:
        """Per-token value to *add* (times lambda) for negative tokens."""
        raise NotImplementedError

    def __call__(self, ce, tokens, progress):
        pos, neg = tokens.polarity == 1, tokens.polarity == -1
        lam = linear_ramp(progress, self.lambda_min, self.lambda_max)
        pos_ce = masked_mean(ce, pos)
        neg_values = self.negative_term(ce, tokens)
        neg_term = masked_mean(neg_values, neg)
        if self.negative_mean == "tokens":
            # With few negatives (three-way split) the per-negative mean gives each one many times a positive's weight.
            scored = (pos | neg).sum().clamp(min=1)
            loss = ((ce * pos).sum() + lam * (neg_values * neg).sum()) / scored
        else:
            loss = pos_ce + lam * neg_term
        return loss, {
            "ce_pos": pos_ce.item(),
            "ce_neg": masked_mean(ce.detach(), neg).item(),
            "neg_term": neg_term.item(),
            "lambda": lam,
            "tokens_pos": int(pos.sum()),
            "tokens_neg": int(neg.sum()),
        }
