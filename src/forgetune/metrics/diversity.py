"""Diversity of a set of generations: distinct-n (higher is more diverse) and self-BLEU (lower is more diverse).

Forgetting-style objectives can collapse a model onto a few stock answers; these catch that. Tokens are whitespace
tokens, so the numbers do not depend on any tokenizer.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

HIGHER_IS_BETTER = True  # distinct_n
SELF_BLEU_HIGHER_IS_BETTER = False  # self-BLEU measures how alike the texts are


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / total n-grams over all texts (Li et al. 2016); n-grams never span two texts. 0.0 if none."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        grams = _ngrams(text.split(), n)
        seen.update(grams)
        total += sum(grams.values())
    return len(seen) / total if total else 0.0


def sentence_bleu(hypothesis: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """BLEU of one tokenised hypothesis against tokenised references (Papineni et al. 2002), smoothed.

    Uniform weights 1/max_n over orders 1..max_n; n-gram counts clipped by their maximum count in any one reference;
    brevity penalty exp(1 - r/c) when the hypothesis length c is below r, the reference length closest to c (the
    shorter one on a tie). Smoothing is Lin & Och (2004) add-one for orders n > 1: p_n = (matches + 1) / (total + 1),
    "smoothing 2" in Chen & Cherry (2014), nltk's `SmoothingFunction().method2`. Without it one missing 4-gram
    zeroes a short sentence's score; unigram precision stays unsmoothed, so a hypothesis sharing no word scores 0.
    """
    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}")
    if not references:
        raise ValueError("BLEU needs at least one reference")
    c = len(hypothesis)
    if c == 0:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        hyp = _ngrams(hypothesis, n)
        max_ref: Counter[tuple[str, ...]] = Counter()
        for ref in references:
            max_ref |= _ngrams(ref, n)  # | keeps the larger count per n-gram
        matches = sum(min(count, max_ref[gram]) for gram, count in hyp.items())
        total = sum(hyp.values())
        if n == 1:
            if matches == 0:
                return 0.0
            log_precision += math.log(matches / total)
        else:
            log_precision += math.log((matches + 1) / (total + 1))
    r = min((len(ref) for ref in references), key=lambda length: (abs(length - c), length))
    log_bp = min(0.0, 1.0 - r / c)
    return math.exp(log_bp + log_precision / max_n)


def self_bleu(texts: Sequence[str], max_n: int = 4) -> float:
    """Mean over texts of the BLEU of each text against all the others as references (Zhu et al. 2018, Texygen).

    1.0 when every text is the same, near 0 when they share nothing; 0.0 for fewer than two texts (no references).
    Uses `sentence_bleu`'s smoothing (Lin & Och add-one for orders > 1), so it is not numerically equal to Texygen's,
    which uses nltk's method1. Quadratic in the number of texts: subsample large sets.
    """
    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}")
    if len(texts) < 2:
        return 0.0
    tokens = [text.split() for text in texts]
    scores = [sentence_bleu(hyp, tokens[:i] + tokens[i + 1 :], max_n) for i, hyp in enumerate(tokens)]
    return sum(scores) / len(scores)
