"""How much of the injected noise a trained model reproduces."""

from __future__ import annotations

from collections.abc import Sequence

from forgetune.metrics.accuracy import exact_match

HIGHER_IS_BETTER = False


def memorised_noise(predictions: Sequence[str], corrupted_answers: Sequence[str], mode: str = "last-number") -> float:
    """Fraction of corrupted training items whose prediction reproduces the corrupted answer.

    predictions[i] is the model's answer to the prompt of corrupted item i, corrupted_answers[i] the wrong answer it
    was trained on; they match when `extract_answer` gives the same non-None answer for both. Exact match against the
    wrong answers rather than accuracy against the right ones: a model can fail to be right without having learnt the
    noise. Raises on an empty set, whose 0.0 would read as a perfect (noise-free) result.
    """
    if not corrupted_answers:
        raise ValueError("no corrupted items to measure memorisation on")
    return exact_match(predictions, corrupted_answers, mode)
