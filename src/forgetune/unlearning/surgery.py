"""Utility-preserving unlearning as constrained optimisation, explicit form: gradient surgery (two backward passes).

Minimise the forget objective F subject to a bounded first-order rise of the retain loss R. With g_f = grad F and
g_r = grad R (flattened over all parameters), the update direction is

    lambda* = (-<g_r, g_f> - eps) / (||g_r||^2 + tiny),    d = g_f + max(lambda*, 0) * g_r,    then clip ||d||.

The optimiser steps theta <- theta - lr * d, so to first order R changes by -lr * <d, g_r>. When lambda* > 0,
<d, g_r> = <g_r, g_f> + lambda* ||g_r||^2 = -eps exactly; when lambda* <= 0, d = g_f and <g_f, g_r> >= -eps. So
in both cases <d, g_r> >= -eps: the first-order retain rise per step is at most lr * eps (eps >= 0 is the allowed
rise per unit learning rate; eps = 0 forbids any first-order rise; eps < 0 demands a decrease of lr * |eps|).
Clipping scales d by c <= 1, which keeps the bound for eps >= 0. lambda* is the closed-form multiplier of
min ||d - g_f||^2 s.t. <d, g_r> >= -eps: the smallest change to g_f that meets the constraint.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from forgetune.objectives.base import TokenBatch
from forgetune.settings import Settings, option
from forgetune.unlearning import register
from forgetune.unlearning.base import Wrapper, forget_mean, retain_mean

TINY = 1e-12  # keeps lambda* finite when g_r = 0 (then d = g_f whatever lambda* is)


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))


def _surgery(g_f: list[torch.Tensor], g_r: list[torch.Tensor], eps: float, max_norm: float | None):
    lam = ((-_dot(g_r, g_f) - eps) / (_dot(g_r, g_r) + TINY)).clamp(min=0)
    d = [f + lam * r for f, r in zip(g_f, g_r, strict=True)]
    norm = _dot(d, d).sqrt()
    if max_norm is not None:
        scale = (max_norm / norm.clamp(min=TINY)).clamp(max=1.0)
        d = [x * scale for x in d]
    return d, lam, norm


def surgery_direction(
    g_f: torch.Tensor | list[torch.Tensor],
    g_r: torch.Tensor | list[torch.Tensor],
    eps: float = 0.0,
    max_norm: float | None = None,
) -> torch.Tensor | list[torch.Tensor]:
    """d = g_f + max(lambda*, 0) * g_r, norm-clipped to `max_norm`; a flat vector or a list of per-parameter tensors
    (the same type comes back). Descending along d changes the retain loss by at most lr * eps to first order."""
    if isinstance(g_f, torch.Tensor):
        return _surgery([g_f], [g_r], eps, max_norm)[0][0]
    return _surgery(list(g_f), list(g_r), eps, max_norm)[0]


def apply_surgery(
    parameters: Iterable[torch.Tensor],
    forget_loss: torch.Tensor,
    retain_loss: torch.Tensor,
    eps: float = 0.0,
    max_norm: float | None = None,
) -> dict[str, float]:
    """Two backward passes (forget, retain) over `parameters`, then `.grad = d` (overwritten, not accumulated);
    the caller runs `optimizer.step()`. Returns lambda*, the norm of d before clipping and the two gradients' dot."""
    params = [p for p in parameters if p.requires_grad]
    g_f = torch.autograd.grad(forget_loss, params, retain_graph=True, allow_unused=True)
    g_r = torch.autograd.grad(retain_loss, params, allow_unused=True)
    g_f = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_f, strict=True)]
    g_r = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_r, strict=True)]
    d, lam, norm = _surgery(g_f, g_r, eps, max_norm)
    for p, g in zip(params, d, strict=True):
        p.grad = g.detach()
    return {"lambda": lam.item(), "direction_norm": norm.item(), "grad_dot": _dot(g_f, g_r).item()}


@dataclass
class SurgerySettings(Settings):
    eps: float = option(0.0, "Allowed first-order rise of the retain loss per unit learning rate (0: none).")
    max_norm: float | None = option(1.0, "Clip the update direction to this norm (none: no clipping).")


@register("constrained-surgery")
class ConstrainedSurgery(Wrapper):
    """An update rule, not a loss: `backward(parameters, ce, tokens, progress)` writes `.grad` from the forget loss's
    forget term and the per-token retain NLL. Any forget term works here (GA's -NLL included): nothing takes its
    log."""

    Settings = SurgerySettings
    default_forget_loss = "ga"
    writes_gradients = True

    def backward(self, parameters: Iterable[torch.Tensor], ce: torch.Tensor, tokens: TokenBatch,
                 progress: float = 0.0) -> dict[str, Any]:
        forget, retain = self.forget.forget_term(ce, tokens), retain_mean(ce, tokens)
        metrics = apply_surgery(parameters, forget, retain, self.eps, self.max_norm)
        return metrics | {
            "forget_term": forget.detach(),
            "forget_nll": forget_mean(ce, tokens).detach(),
            "retain_nll": retain.detach(),
        }
