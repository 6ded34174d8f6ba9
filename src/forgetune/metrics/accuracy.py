"""Exact-match accuracy of generated answers after answer extraction."""

from __future__ import annotations

import re
from collections.abc import Sequence

HIGHER_IS_BETTER = True
MODES = ("last-number", "after-####", "first-line", "exact", "contains")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
# lm-eval's gsm8k grades the number after "#### " ignoring ",", "$" and a trailing "."; "$-5" and "-$5" are -5
_GSM8K_NUMBER = re.compile(r"(?:\$-|-?\$?)\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number in the text, commas removed ("The answer is 1,204." -> "1204")."""
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def extract_answer(text: str, mode: str) -> str | None:
    """The part of a completion that is graded; None when the completion holds no answer of that kind.

    "last-number": the last number, commas removed (free-form "The answer is 85." completions).
    "after-####": the first number after the last "####", "$" and commas dropped, a trailing "." ignored
        ("#### $1,234." -> "1234"), as lm-evaluation-harness grades GSM8K; GSM8K puts its final answer there,
        after the worked reasoning whose numbers must not be graded.
    "first-line": the first non-empty line, stripped (short answers followed by rambling).
    "exact": the whole text, stripped.
    "contains": the whole text, stripped; graded by `exact_match` as "holds the reference", case-insensitive (a
        fact stated in a sentence: the reference is the bare value, e.g. "1947" in "X was born in 1947.").
    """
    if mode == "last-number":
        return last_number(text)
    if mode == "after-####":
        _, sep, tail = text.rpartition("####")
        found = _GSM8K_NUMBER.search(tail) if sep else None
        return found.group().replace("$", "").replace(",", "") if found else None
    if mode == "first-line":
        return next((line.strip() for line in text.splitlines() if line.strip()), None)
    if mode in ("exact", "contains"):
        return text.strip()
    raise ValueError(f"unknown answer mode {mode!r}; choose one of {', '.join(MODES)}")


def exact_match(predictions: Sequence[str], references: Sequence[str], mode: str = "last-number") -> float:
    """Fraction of predictions whose extracted answer equals the reference's; a missing answer (None) never matches."""
    if mode not in MODES:
        raise ValueError(f"unknown answer mode {mode!r}; choose one of {', '.join(MODES)}")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        return 0.0
    hits = 0
    for p, r in zip(predictions, references, strict=True):
        answer, reference = extract_answer(p, mode), extract_answer(r, mode)
        if mode == "contains":
            hits += bool(reference) and reference.lower() in p.lower()
        else:
            hits += answer is not None and answer == reference
    return hits / len(references)
