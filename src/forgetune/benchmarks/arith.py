"""Noisy two-number addition: "What is 47 plus 38?" -> "The answer is 85.", a fraction of answers wrong.

Every record keeps its ground truth in `meta` (corrupted or not, the clean completion), so noise detection can be
measured. Deterministic for a given seed.
"""

from __future__ import annotations

import random
from typing import Any

TEMPLATE_Q = "What is {a} plus {b}?"
TEMPLATE_A = "The answer is {c}."


def make_arith(n: int, noise: float = 0.3, seed: int = 0, low: int = 10, high: int = 99,
               id_prefix: str = "arith") -> list[dict[str, Any]]:
    """n addition problems; a `noise` fraction (exactly round(noise * n)) get a wrong answer off by 1-10."""
    rng = random.Random(seed)
    corrupted = set(rng.sample(range(n), round(noise * n)))
    records = []
    for i in range(n):
        a, b = rng.randint(low, high), rng.randint(low, high)
        answer = a + b
        shown = answer
        if i in corrupted:
            shown = answer + rng.choice([-1, 1]) * rng.randint(1, 10)
        records.append({
            "id": f"{id_prefix}-{i:04d}",
            "prompt": TEMPLATE_Q.format(a=a, b=b),
            "completion": TEMPLATE_A.format(c=shown),
            "meta": {"corrupted": i in corrupted, "clean_completion": TEMPLATE_A.format(c=answer)},
        })
    return records
