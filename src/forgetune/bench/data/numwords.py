"""Numbers written in English words, with a systematic error on one slice: "forty" spelled "fourty".

"Write 347 in words." -> "three hundred forty-seven". Ground truth is the `inflect` package's
`number_to_words(n, andword="", comma="")`: lowercase words, tens and units joined by a hyphen, no "and", no commas,
no trailing period ("one thousand forty-five", "nine thousand nine hundred ninety-nine"), so exact match on the first
line grades it.

The slice is the numbers whose words hold "forty" (tens digit 4 below 10000). In train a fixed share of the slice is
misspelled the same way every time, as a careless annotator would, which plain SFT learns as a rule; the rest of the
slice stays correct (the minority that shows the right rule). Train, dev, test and trusted are drawn without
replacement from one pool of integers, so they are disjoint; each holds the same share of slice items so that the
clean splits have enough of them to measure the error. Every record keeps its ground truth in `meta`.
"""

from __future__ import annotations

import functools
import random
from typing import Any

from forgetune.errors import ForgetuneError

TEMPLATE_Q = "Write {n} in words."
RIGHT, WRONG = "forty", "fourty"


@functools.cache
def _engine():
    try:
        import inflect
    except ImportError:
        raise ForgetuneError("the numwords benchmark needs the inflect package: pip install inflect") from None
    return inflect.engine()


@functools.cache
def number_words(n: int) -> str:
    """n in lowercase English words without "and" or commas; cached since a pool asks for thousands."""
    return _engine().number_to_words(n, andword="", comma="")


def make_numwords(n_train: int, n_dev: int, n_test: int, n_trusted: int, wrong_fraction: float, seed: int,
                  low: int = 1, high: int = 9999, slice_share: float = 0.35) -> dict[str, list[dict[str, Any]]]:
    """Train, dev, test and trusted splits; exactly round(wrong_fraction * slice items in train) are misspelled.

    Each split holds round(slice_share * size) slice items; dev, test and trusted are clean.
    """
    for name, value in (("wrong_fraction", wrong_fraction), ("slice_share", slice_share)):
        if not 0 <= value <= 1:
            raise ForgetuneError(f"{name} must be between 0 and 1, not {value}")
    sizes = {"train": n_train, "dev": n_dev, "test": n_test, "trusted": n_trusted}
    n_slice = {split: round(slice_share * size) for split, size in sizes.items()}
    pool = range(low, high + 1)
    on = [n for n in pool if RIGHT in number_words(n)]
    off = [n for n in pool if RIGHT not in number_words(n)]
    need_on = sum(n_slice.values())
    need_off = sum(sizes.values()) - need_on
    if need_on > len(on) or need_off > len(off):
        raise ForgetuneError(f"numbers {low}-{high} hold {len(on)} '{RIGHT}' and {len(off)} other items but the "
                             f"splits need {need_on} and {need_off}; ask for fewer items, another slice_share "
                             "or a larger high")
    rng = random.Random(seed)
    rng.shuffle(on)
    rng.shuffle(off)
    drawn = {}
    for split, size in sizes.items():
        numbers = [on.pop() for _ in range(n_slice[split])] + [off.pop() for _ in range(size - n_slice[split])]
        rng.shuffle(numbers)  # so slice items are not bunched at the start
        drawn[split] = numbers
    train_slice = [n for n in drawn["train"] if RIGHT in number_words(n)]
    corrupted = set(rng.sample(train_slice, round(wrong_fraction * len(train_slice))))

    def record(split: str, i: int, n: int) -> dict[str, Any]:
        clean = number_words(n)
        noisy = n in corrupted  # only train numbers can be in it
        return {"id": f"{split}-{i:04d}", "prompt": TEMPLATE_Q.format(n=n),
                "completion": clean.replace(RIGHT, WRONG) if noisy else clean,
                "meta": {"corrupted": noisy, "clean_completion": clean, "slice": RIGHT in clean}}

    return {split: [record(split, i, n) for i, n in enumerate(numbers)] for split, numbers in drawn.items()}
