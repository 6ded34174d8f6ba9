"""Noisy two-number addition: "What is 47 plus 38?" -> "The answer is 85.", a fraction of answers wrong.

Every record keeps its ground truth in `meta` (corrupted or not, the clean completion, and `slice`: whether the
units column carries), so noise detection and the exact match on and off the slice can be measured. Every split of
a seed is drawn *without replacement* from one pool of unordered pairs {a, b}, so no problem (in either order) is in
two splits. Two kinds of noise:

- random: a wrong answer is off by a random 1-10 (plain SFT partly averages this away);
- systematic: a consistent wrong rule on a recognisable slice: a carry of the units column is dropped
  (47 + 38 -> 75) on `wrong_fraction` of the carry problems, which SFT learns as a rule; the other carry problems
  are answered correctly (the correct minority a detector can leave to teach the right rule).
"""

from __future__ import annotations

import random
from typing import Any

from forgetune.errors import ForgetuneError

TEMPLATE_Q = "What is {a} plus {b}?"
TEMPLATE_A = "The answer is {c}."
NOISE_KINDS = ("random", "systematic")


def carries(a: int, b: int) -> bool:
    return (a % 10) + (b % 10) >= 10


def _drop_carry(a: int, b: int) -> int:
    return a + b - 10 if carries(a, b) else a + b


def pair_pool(low: int = 10, high: int = 99) -> list[tuple[int, int]]:
    """Every unordered pair once: "47 plus 38" and "38 plus 47" are the same problem."""
    return [(a, b) for a in range(low, high + 1) for b in range(a, high + 1)]


def _record(split: str, i: int, a: int, b: int, shown: int) -> dict[str, Any]:
    return {"id": f"{split}-{i:04d}", "prompt": TEMPLATE_Q.format(a=a, b=b), "completion": TEMPLATE_A.format(c=shown),
            "meta": {"corrupted": shown != a + b, "clean_completion": TEMPLATE_A.format(c=a + b),
                     "slice": carries(a, b)}}


def arith_splits(sizes: dict[str, int], seed: int, noise: float = 0.0, kind: str = "random",
                 wrong_fraction: float = 0.7, noisy: str = "train", low: int = 10, high: int = 99
                 ) -> dict[str, list[dict[str, Any]]]:
    """Disjoint splits of the given sizes (in that order) from one shuffled pool; only the `noisy` split has noise.

    random: exactly round(noise * n) items of the noisy split are off by 1-10. systematic: exactly
    round(wrong_fraction * carry items) of the noisy split drop their carry (`noise` is unused).
    """
    if kind not in NOISE_KINDS:
        raise ForgetuneError(f"unknown noise kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}")
    pool = pair_pool(low, high)
    if sum(sizes.values()) > len(pool):
        raise ForgetuneError(f"{sum(sizes.values())} arithmetic problems asked for, only {len(pool)} distinct pairs "
                             f"in [{low}, {high}]; ask for fewer (--n-train, --n-test, --trusted)")
    rng = random.Random(seed)
    rng.shuffle(pool)
    splits, start = {}, 0
    for split, n in sizes.items():
        pairs = [p if rng.random() < 0.5 else p[::-1] for p in pool[start : start + n]]
        start += n
        shown = [a + b for a, b in pairs]
        if split == noisy and kind == "random":
            for i in rng.sample(range(n), round(noise * n)):
                shown[i] += rng.choice([-1, 1]) * rng.randint(1, 10)
        elif split == noisy:
            carry = [i for i, (a, b) in enumerate(pairs) if carries(a, b)]
            for i in rng.sample(carry, round(wrong_fraction * len(carry))):
                shown[i] = _drop_carry(*pairs[i])
        splits[split] = [_record(split, i, a, b, c) for i, ((a, b), c) in enumerate(zip(pairs, shown, strict=True))]
    return splits


def make_arith(n: int, noise: float = 0.3, seed: int = 0, id_prefix: str = "arith", kind: str = "random",
               wrong_fraction: float = 1.0) -> list[dict[str, Any]]:
    """One split of n problems (see `arith_splits`); for files whose problems need not be disjoint from another's."""
    return arith_splits({id_prefix: n}, seed, noise, kind, wrong_fraction, noisy=id_prefix)[id_prefix]


def _pair_of(prompt: str) -> tuple[int, int]:
    a, b = (int(w.rstrip("?")) for w in prompt.split() if w.rstrip("?").isdigit())
    return min(a, b), max(a, b)


def held_out(n: int, seed: int, train: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """n clean problems none of which (in either order) is a prompt of `train`: a test set for a fixed file."""
    seen = {_pair_of(r["prompt"]) for r in train}
    candidates = arith_splits({"test": len(pair_pool())}, seed)["test"]
    test = [r for r in candidates if _pair_of(r["prompt"]) not in seen][:n]
    return [{**r, "id": f"test-{i:04d}"} for i, r in enumerate(test)]
