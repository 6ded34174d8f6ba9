"""Batches carry everything the loss needs: ids, labels, and per-token polarity / base CE from the partition."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from forgetune.data.corpus import IGNORE_INDEX, Example, example_lengths, example_offsets

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


class TokenFeatures(Sequence[dict[str, Any]]):
    """Training features, each built when the data loader asks for it: the example's ids and labels, and the flat
    per-token arrays (corpus order) spread onto its positions. Nothing per token is held beside the packed corpus
    and the flat arrays, whatever the corpus size."""

    def __init__(self, examples: Sequence[Example], offsets: np.ndarray | None, arrays: dict[str, np.ndarray]):
        self.examples, self.offsets, self.arrays = examples, offsets, arrays
        self.lengths = example_lengths(examples)  # for length-grouped batches, without building any feature
        if offsets is not None:
            counts, scored = np.diff(example_offsets(examples)), np.diff(np.asarray(offsets))
            if len(counts) != len(scored):
                raise ValueError(f"{len(counts)} examples, offsets for {len(scored)}")
            mismatched = np.flatnonzero(counts != scored)
            if mismatched.size:
                i = int(mismatched[0])
                raise ValueError(f"example {examples[i].id}: {counts[i]} response tokens, {scored[i]} scores")

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]  # negative indices, and IndexError past the end
        ex = self.examples[i]
        feat: dict[str, Any] = {"input_ids": ex.input_ids, "labels": ex.labels}
        if self.offsets is not None:
            lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
            for name, flat in self.arrays.items():
                fill = TOKEN_FIELDS[name]
                dtype = np.float32 if isinstance(fill, float) else np.int64
                feat[name] = spread(np.asarray(flat[lo:hi], dtype=dtype), ex.labels, fill)
        return feat


def make_features(
    examples: Sequence[Example],
    offsets: np.ndarray | None = None,
    polarity: np.ndarray | None = None,
    base_ce: np.ndarray | None = None,
    **token_values: np.ndarray,
) -> TokenFeatures:
    """Training features of `examples` with flat per-token arrays (corpus order, sliced by `offsets`) spread onto
    each example's positions. `token_values`: more of them by their TOKEN_FIELDS name."""
    arrays = {k: v for k, v in {"polarity": polarity, "base_ce": base_ce, **token_values}.items() if v is not None}
    return TokenFeatures(examples, offsets, arrays)


class Collator:
    """Pads per-position fields to the longest sequence of the batch (right or left padding)."""

    def __init__(self, pad_token_id: int, padding_side: str = "right", pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of

    def examples(self, examples: Iterable[Example]) -> dict[str, torch.Tensor]:
        """A batch of examples' ids and labels alone (what scoring and the membership statistics read)."""
        return self([{"input_ids": ex.input_ids, "labels": ex.labels} for ex in examples])

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
