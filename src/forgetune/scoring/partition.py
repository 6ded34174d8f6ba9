"""Rank response tokens by score and split them into positives (learn), negatives (forget) and ignored.

O(N): the k-th largest score comes from `np.partition`; ties at the threshold go to the earliest tokens in corpus
order, so the result is deterministic and exactly floor(rho * N) tokens are positive.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

POSITIVE, IGNORED, NEGATIVE = 1, 0, -1


def num_positive(n: int, rho: float) -> int:
    """floor(rho * n), exact for decimal rho (0.29 * 100 is 29, not 28.999...)."""
    return math.floor(Fraction(repr(float(rho))) * n)


def partition_tokens(scores: np.ndarray, rho: float) -> np.ndarray:
    """Bool mask over a flat array of scores in corpus order: True for the top floor(rho * N) (positives).

    Ties are broken by corpus order (earlier token first). NaN scores are rejected.
    """
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must be a flat array, got shape {scores.shape}")
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    n = scores.shape[0]
    if n and np.isnan(scores.max()):  # max propagates NaN: one pass, no N-sized temporary
        raise ValueError(f"{int(np.isnan(scores).sum())} NaN score(s): rescore the corpus")
    k = num_positive(n, rho)
    if k == 0:
        return np.zeros(n, dtype=bool)
    if k == n:
        return np.ones(n, dtype=bool)
    threshold = np.partition(scores, n - k)[n - k]  # the k-th largest score
    positive = scores >= threshold
    extra = int(np.count_nonzero(positive)) - k
    if extra:  # ties at the threshold: keep the earliest, drop the latest `extra`
        ties = np.flatnonzero(scores == threshold)
        positive[ties[len(ties) - extra :]] = False
    return positive


def group_offsets(offsets: np.ndarray, granularity: str, batch_size: int) -> np.ndarray:
    """Boundaries of the ranking groups in the flat array: the corpus, each example, or runs of examples."""
    offsets = np.asarray(offsets, dtype=np.int64)
    if granularity == "global":
        return offsets[[0, -1]]
    if granularity == "sequence":
        return offsets
    if granularity == "batch":
        return np.unique(np.append(offsets[::batch_size], offsets[-1]))
    raise ValueError(f"unknown granularity {granularity!r}")


def partition_polarity(
    scores: np.ndarray,
    offsets: np.ndarray,
    rho: float,
    granularity: str = "global",
    batch_size: int = 16,
    negative_below: float | None = None,
    neutral: str = "ignore",
) -> np.ndarray:
    """int8 per token: +1 positive, -1 negative, 0 ignored.

    Two-way (default): every non-positive token is negative. Three-way (`negative_below` = tau): a non-positive token is
    negative only where its score < tau (the reference predicts it worse than the base); the others (scores near 0:
    "nothing to learn here", often format tokens) are ignored, or learned like positives with neutral="learn".
    """
    scores = np.asarray(scores)
    positive = np.zeros(scores.shape[0], dtype=bool)
    bounds = group_offsets(offsets, granularity, batch_size)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        positive[lo:hi] = partition_tokens(scores[lo:hi], rho)
    polarity = np.where(positive, POSITIVE, NEGATIVE).astype(np.int8)
    if negative_below is not None:
        polarity[~positive & ~(scores < negative_below)] = POSITIVE if neutral == "learn" else IGNORED
    return polarity


def example_polarity(polarity: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Example-level filtering of a token partition: an example with any negative token has every token ignored,
    every other example has every token positive."""
    flagged = np.logical_or.reduceat(polarity == NEGATIVE, offsets[:-1]) if polarity.size else np.array([], bool)
    lengths = np.diff(offsets)
    flagged &= lengths > 0  # reduceat reads the next example's first token for an empty one
    return np.where(np.repeat(flagged, lengths), IGNORED, POSITIVE).astype(np.int8)
