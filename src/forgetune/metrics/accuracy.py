"""Exact-match accuracy of generated answers after answer extraction."""

from __future__ import annotations

import re
from collections.abc import Sequence

HIGHER_IS_BETTER = True
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number in the text, commas removed ("The answer is 1,204." -> "1204")."""
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions whose last number equals the reference's (0 for a prediction without one)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        return 0.0
    hits = sum(last_number(p) is not None and last_number(p) == last_number(r)
               for p, r in zip(predictions, references, strict=True))
    return hits / len(references)
