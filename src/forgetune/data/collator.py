"""Batches carry everything the loss needs: ids, labels, and per-token polarity / base CE from the partition."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from forgetune.data.formats import IGNORE_INDEX, Example

# Per-position fields, aligned with input_ids, and the value used for padding.
TOKEN_FIELDS = {"input_ids": None, "labels": IGNORE_INDEX, "polarity": 0, "base_ce": 0.0}


def response_positions(labels: Sequence[int]) -> np.ndarray:
    """Positions t whose token is a response token (scored from the logits at t - 1)."""
    return np.flatnonzero(np.asarray(labels) != IGNORE_INDEX)


def spread(flat: np.ndarray, labels: Sequence[int], fill: float | int = 0) -> list:
    """Put one example's per-response-token values (corpus order) at their positions in the sequence."""
    out = np.full(len(labels), fill, dtype=flat.dtype)
    out[response_positions(labels)] = flat
    return out.tolist()


def make_features(
    examples: Sequence[Example],
    offsets: np.ndarray | None = None,
    polarity: np.ndarray | None = None,
    base_ce: np.ndarray | None = None,
    **token_values: np.ndarray,
) -> list[dict[str, Any]]:
    """Training features: flat per-token arrays (corpus order) are spread onto each example once, up front.
    `token_values`: more of them by their TOKEN_FIELDS name."""
    arrays = {k: v for k, v in {"polarity": polarity, "base_ce": base_ce, **token_values}.items() if v is not None}
    features = []
    for i, ex in enumerate(examples):
        feat: dict[str, Any] = {"input_ids": ex.input_ids, "labels": ex.labels}
        if offsets is not None:
            lo, hi = int(offsets[i]), int(offsets[i + 1])
            if hi - lo != ex.num_response_tokens:
                raise ValueError(f"example {ex.id}: {ex.num_response_tokens} response tokens, {hi - lo} scores")
            for name, flat in arrays.items():
                fill = TOKEN_FIELDS[name]
                dtype = np.float32 if isinstance(fill, float) else np.int64
                feat[name] = spread(np.asarray(flat[lo:hi], dtype=dtype), ex.labels, fill)
        features.append(feat)
    return features


class Collator:
    """Pads per-position fields to the longest sequence of the batch (right or left padding)."""

    def __init__(self, pad_token_id: int, padding_side: str = "right", pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch: dict[str, torch.Tensor] = {}
        for name, fill in TOKEN_FIELDS.items():
            if name not in features[0]:
                continue
            fill = self.pad_token_id if fill is None else fill
            dtype = torch.float32 if isinstance(fill, float) else torch.long
            out = torch.full((len(features), length), fill, dtype=dtype)
            for row, f in enumerate(features):
                values = torch.tensor(f[name], dtype=dtype)
                if self.padding_side == "right":
                    out[row, : len(values)] = values
                else:
                    out[row, length - len(values):] = values
            batch[name] = out
        mask = torch.zeros((len(features), length), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            if self.padding_side == "right":
                mask[row, :n] = 1
            else:
                mask[row, length - n:] = 1
        batch["attention_mask"] = mask
        return batch
