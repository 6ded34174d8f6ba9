"""Noisy two-number addition: "What is 47 plus 38?" -> "The answer is 85.", a fraction of answers wrong.

Every record keeps its ground truth in `meta` (corrupted or not, the clean completion), so noise detection can be
measured. Deterministic for a given seed. Two kinds of noise:

- random: a wrong answer is off by a random 1-10 (plain SFT partly averages this away);
- systematic: a consistent wrong rule on a recognisable slice, every carry of the units column dropped
  (47 + 38 -> 75), which plain SFT learns as a rule.
"""

from __future__ import annotations

import random
from typing import Any

TEMPLATE_Q = "What is {a} plus {b}?"
TEMPLATE_A = "The answer is {c}."
NOISE_KINDS = ("random", "systematic")


def _drop_carry(a: int, b: int) -> int:
    return a + b - 10 if (a % 10) + (b % 10) >= 10 else a + b


def make_arith(n: int, noise: float = 0.3, seed: int = 0, low: int = 10, high: int = 99,
               id_prefix: str = "arith", kind: str = "random") -> list[dict[str, Any]]:
    """n addition problems with exactly round(noise * n) wrong answers.

    random: the corrupted items are a random subset, each off by 1-10. systematic: the corrupted items are problems
    whose units digits carry, answered without the carry (problems are drawn so that enough of them carry).
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}")
    rng = random.Random(seed)
    n_wrong = round(noise * n)
    corrupted = set(rng.sample(range(n), n_wrong))
    records = []
    for i in range(n):
        while True:
            a, b = rng.randint(low, high), rng.randint(low, high)
            carries = (a % 10) + (b % 10) >= 10
            if kind == "random" or carries == (i in corrupted) or (i not in corrupted and n_wrong == 0):
                break
        answer = a + b
        shown = answer
        if i in corrupted:
            shown = _drop_carry(a, b) if kind == "systematic" else answer + rng.choice([-1, 1]) * rng.randint(1, 10)
        records.append({
            "id": f"{id_prefix}-{i:04d}",
            "prompt": TEMPLATE_Q.format(a=a, b=b),
            "completion": TEMPLATE_A.format(c=shown),
            "meta": {"corrupted": i in corrupted, "clean_completion": TEMPLATE_A.format(c=answer)},
        })
    return records
