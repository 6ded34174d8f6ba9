"""Per-token cross-entropy of response tokens. The token at position t is predicted by the logits at t - 1."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from forgetune.data.formats import IGNORE_INDEX


def target_mask(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: positions t >= 1 holding a response token. Position 0 is never scored (nothing predicts it)."""
    mask = labels != IGNORE_INDEX
    mask[:, 0] = False
    return mask


def response_token_ce(logits: torch.Tensor, labels: torch.Tensor, chunk_rows: int = 4096) -> torch.Tensor:
    """CE of every response token, flat in (batch, position) order: shape (N,) float32.

    logits: (B, T, V), labels: (B, T). Only the N response rows of logits[:, :-1] are cast to fp32, `chunk_rows` at a
    time when no gradient is needed, so a large vocabulary never materialises a full fp32 (B, T, V) tensor.
    """
    mask = target_mask(labels)
    rows = logits[:, :-1][mask[:, 1:]]  # (N, V): logits at t - 1 for each target t
    targets = labels[mask]  # (N,)
    if torch.is_grad_enabled() and rows.requires_grad:
        return F.cross_entropy(rows.float(), targets, reduction="none")
    return torch.cat(
        [F.cross_entropy(rows[i : i + chunk_rows].float(), targets[i : i + chunk_rows], reduction="none")
         for i in range(0, rows.shape[0], chunk_rows)]
    ) if rows.shape[0] else rows.new_zeros(0, dtype=torch.float32)
