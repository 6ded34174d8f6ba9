"""Perplexity from per-token cross-entropies."""

from __future__ import annotations

import numpy as np

HIGHER_IS_BETTER = False


def perplexity(token_ce: np.ndarray) -> float:
    """exp(mean CE) over all tokens, every token weighted equally (not a mean of per-example perplexities).

    token_ce holds natural-log cross-entropies (nats), as forgetune's scorer writes them; any shape is flattened.
    Raises on an empty input, NaN, or negative CE (a cross-entropy of a probability cannot be below zero).
    """
    ce = np.asarray(token_ce, dtype=np.float64).reshape(-1)
    if ce.size == 0:
        raise ValueError("perplexity of no tokens is undefined")
    if np.isnan(ce).any():
        raise ValueError(f"{int(np.isnan(ce).sum())} NaN cross-entropy value(s)")
    if (ce < 0).any():
        raise ValueError(f"cross-entropy must be >= 0, got min {ce.min()}")
    return float(np.exp(ce.mean()))
