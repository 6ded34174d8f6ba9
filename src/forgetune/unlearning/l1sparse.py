"""Sparsity-aware unlearning (Jia et al., 2023, "Model Sparsity Can Simplify Machine Unlearning", arXiv 2304.04934).

`l1sparse` adds alpha_t * ||theta - theta_0||_1 to another method's loss, alpha_t decaying linearly from alpha to 0
over the run: early on it keeps the update sparse (few weights move, so little of the retained knowledge is
touched), late it lets the method finish. `prune` is the other half of that paper: global magnitude pruning before
unlearning.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from forgetune.objectives.base import TokenBatch
from forgetune.schedules import linear_ramp
from forgetune.settings import Settings, at_least, option
from forgetune.unlearning import register
from forgetune.unlearning.base import Wrapper


def l1_penalty(
    parameters: Iterable[torch.Tensor], initial: Iterable[torch.Tensor], progress: float, alpha: float
) -> torch.Tensor:
    """alpha * (1 - progress) * sum |theta - theta_0| (progress clamped to [0, 1]), attached to the graph."""
    alpha_t = linear_ramp(progress, alpha, 0.0)
    return alpha_t * sum((p - p0).abs().sum() for p, p0 in zip(parameters, initial, strict=True))


@dataclass
class L1Settings(Settings):
    alpha: float = option(
        1e-4, "Start weight of the l1 penalty on theta - theta_0, decaying to 0 (Jia et al.'s range 5e-5..1e-4; "
        "scale-dependent: it sums over every weight)."
    )

    def validate(self):
        at_least("alpha", self.alpha)


@register("l1sparse")
class L1Sparse(Wrapper):
    """Wraps the forget loss (whole: its retain term included); snapshots theta_0 = `parameters` at construction (a
    copy: memory)."""

    Settings = L1Settings
    default_forget_loss = "graddiff"
    owns_retain = False
    needs_parameters = True

    def __init__(self, parameters: Iterable[torch.Tensor], forget_loss: str | None = None, **settings: Any):
        super().__init__(forget_loss, **settings)
        self.parameters = [p for p in parameters if p.requires_grad]
        self.initial = [p.detach().clone() for p in self.parameters]

    def __call__(self, ce: torch.Tensor, tokens: TokenBatch,
                 progress: float = 0.0) -> tuple[torch.Tensor, dict[str, Any]]:
        loss, metrics = self.forget(ce, tokens, progress)
        penalty = l1_penalty(self.parameters, self.initial, progress, self.alpha)
        loss = loss + penalty
        return loss, metrics | {
            "l1": penalty.detach(),
            "alpha": linear_ramp(progress, self.alpha, 0.0),
            "loss": loss.detach(),
        }


@torch.no_grad()
def prune(model: nn.Module, sparsity: float, exclude: tuple[str, ...] = ("lm_head",)) -> dict[str, torch.Tensor]:
    """Global magnitude pruning of every nn.Linear weight (modules named in `exclude` left out: lm_head is often
    tied to the embeddings): exactly round(sparsity * N) of the N weights, the smallest |w| over all layers, are set
    to 0 (ties broken by position). Returns {module name: bool mask, True = kept}; re-apply with `weight.mul_(mask)`
    after optimiser steps to keep them at 0. A weight shared by several modules is counted once."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    layers, seen = [], set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.split(".")[-1] not in exclude and id(module.weight) not in seen:
            seen.add(id(module.weight))
            layers.append((name, module.weight))
    if not layers:
        raise ValueError("the model has no nn.Linear layer to prune")
    flat = torch.cat([w.detach().abs().flatten().float() for _, w in layers])
    keep = torch.ones_like(flat, dtype=torch.bool)
    count = round(sparsity * flat.numel())
    if count:
        keep[torch.topk(flat, count, largest=False, sorted=False).indices] = False
    masks, start = {}, 0
    for name, weight in layers:
        mask = keep[start : start + weight.numel()].view_as(weight)
        start += weight.numel()
        weight.mul_(mask)
        masks[name] = mask
    return masks
