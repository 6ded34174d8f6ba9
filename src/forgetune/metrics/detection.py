"""How well per-token scores find the corrupted tokens of a noisy training set.

Sign convention: a forgetune score is CE_base - CE_ref, and a LOW score marks a token as negative (suspicious: the
reference finds it more surprising than the base does). Detection metrics treat "corrupted" as the positive class,
so they rank by -score; `detection_auroc` does the negation so callers cannot forget it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from forgetune.data.collator import response_positions
from forgetune.data.formats import tokenize_messages

HIGHER_IS_BETTER = True
AGGREGATIONS = ("min", "mean", "sum")


def _flat_bool_pair(a: np.ndarray, labels: np.ndarray, a_name: str) -> tuple[np.ndarray, np.ndarray]:
    a, labels = np.asarray(a), np.asarray(labels)
    if a.ndim != 1 or a.shape != labels.shape:
        raise ValueError(f"{a_name} and labels must be flat arrays of one length, got {a.shape} and {labels.shape}")
    if labels.dtype != bool:
        raise ValueError(f"labels must be a bool array (True = positive), got dtype {labels.dtype}")
    return a, labels


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative) + 0.5 P(equal).

    Computed as the Mann-Whitney U statistic with average ranks for ties, O(N log N) instead of comparing every
    positive with every negative. Higher scores are taken to mean "more positive". Raises if a class is empty,
    where the AUROC is undefined.
    """
    scores, labels = _flat_bool_pair(scores, labels, "scores")
    if np.isnan(scores).any():
        raise ValueError(f"{int(np.isnan(scores).sum())} NaN score(s)")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs both classes, got {n_pos} positive and {n_neg} negative")
    # Average 1-based rank of each distinct value: a tie group of size c ending at cumulative count e has ranks
    # e-c+1 .. e, whose mean is e - (c - 1) / 2.
    _, group, counts = np.unique(scores, return_inverse=True, return_counts=True)
    group_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum_pos = float(group_rank[group.reshape(-1)][labels].sum())
    u = rank_sum_pos - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def detection_auroc(flat_scores: np.ndarray, is_corrupted_token: np.ndarray) -> float:
    """AUROC of finding corrupted tokens (positive class) from forgetune scores, ranked by -score.

    A low score (CE_base - CE_ref) is what flags a token, so the raw score would give 1 - AUROC. Works equally on
    per-example scores from `example_scores` with per-example labels.
    """
    return auroc(-np.asarray(flat_scores, dtype=np.float64), is_corrupted_token)


def precision_recall(predicted: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(precision, recall) of a bool prediction against bool labels, True = positive (corrupted).

    Precision is 0.0 when nothing is predicted positive (a detector that flags nothing has found nothing; sklearn's
    zero_division default); recall raises when there are no positives, since there is nothing to recall.
    """
    predicted, labels = _flat_bool_pair(predicted, labels, "predicted")
    if predicted.dtype != bool:
        raise ValueError(f"predicted must be a bool array, got dtype {predicted.dtype}")
    n_pos = int(labels.sum())
    if n_pos == 0:
        raise ValueError("recall is undefined without positive labels")
    true_pos = int((predicted & labels).sum())
    n_predicted = int(predicted.sum())
    precision = true_pos / n_predicted if n_predicted else 0.0
    return precision, true_pos / n_pos


def corrupted_token_labels(response_token_ids: Sequence[int], clean_token_ids: Sequence[int]) -> np.ndarray:
    """Bool per token of the noisy response: True where it departs from the clean answer.

    The common prefix and common suffix of the two token sequences are clean; everything between them in the noisy
    response is corrupted. Position-by-position comparison would be wrong as soon as the lengths differ, and
    marking the whole example would be too coarse: "The answer is 144." vs "The answer is 146." shares "The answer
    is 14" and "." with the clean answer, so only the differing digit tokens are corrupted — the tokens a detector
    should flag and an unlearning objective should push down. The prefix and suffix are not allowed to overlap, so a
    pure deletion (the noisy response is the clean one with tokens removed) has no corrupted token to mark.
    """
    noisy, clean = list(response_token_ids), list(clean_token_ids)
    limit = min(len(noisy), len(clean))
    prefix = 0
    while prefix < limit and noisy[prefix] == clean[prefix]:
        prefix += 1
    suffix = 0
    while suffix < limit - prefix and noisy[-1 - suffix] == clean[-1 - suffix]:
        suffix += 1
    labels = np.zeros(len(noisy), dtype=bool)
    labels[prefix : len(noisy) - suffix] = True
    return labels


def example_scores(flat_scores: np.ndarray, offsets: np.ndarray, how: str = "min") -> np.ndarray:
    """One score per example from the flat per-token scores; offsets[i]:offsets[i+1] is example i's slice.

    "min" is the default because a corrupted example is betrayed by its single most surprising token (the one wrong
    digit), while "mean" dilutes that token among the many clean format tokens ("The answer is ...") around it.
    "mean" and "sum" are there for comparison; "sum" also grows with length. Empty examples score 0.0 under "sum"
    and are rejected under "min" and "mean", where they have no value.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; choose one of {', '.join(AGGREGATIONS)}")
    flat = np.asarray(flat_scores, dtype=np.float64)
    offsets = np.asarray(offsets)
    if flat.ndim != 1 or offsets.ndim != 1 or offsets.size < 1:
        raise ValueError(f"flat_scores and offsets must be flat arrays, got {flat.shape} and {offsets.shape}")
    if not np.issubdtype(offsets.dtype, np.integer):
        raise ValueError(f"offsets must be integers, got dtype {offsets.dtype}")
    lengths = np.diff(offsets)
    if offsets[0] != 0 or offsets[-1] != flat.size or (lengths < 0).any():
        raise ValueError(f"offsets must rise from 0 to len(flat_scores) = {flat.size}, got {offsets[0]} .. "
                         f"{offsets[-1]}{' (decreasing somewhere)' if (lengths < 0).any() else ''}")
    nonempty = lengths > 0
    if how != "sum" and not nonempty.all():
        raise ValueError(f"{int((~nonempty).sum())} empty example(s) have no {how} score")
    out = np.zeros(lengths.size, dtype=np.float64)
    if nonempty.any():
        # reduceat over the starts of the non-empty examples: each segment runs to the next non-empty start, and the
        # empty examples skipped in between add no elements, so every segment is exactly one example.
        ufunc = np.minimum if how == "min" else np.add
        out[nonempty] = ufunc.reduceat(flat, offsets[:-1][nonempty])
    if how == "mean":
        out /= lengths
    return out


def corrupted_tokens(tokenizer, examples) -> tuple[np.ndarray, np.ndarray]:
    """Per response token: corrupted (differs from the clean answer); per example: corrupted."""
    per_example = np.array([bool(ex.meta.get("corrupted")) for ex in examples])
    labels = []
    for ex, corrupted in zip(examples, per_example, strict=True):
        noisy_ids = [ex.input_ids[p] for p in response_positions(ex.labels)]
        if not corrupted or "clean_completion" not in ex.meta:
            labels.append(np.zeros(len(noisy_ids), dtype=bool))
            continue
        clean = ex.prompt_messages + [{"role": "assistant", "content": ex.meta["clean_completion"]}]
        ids, clean_labels = tokenize_messages(tokenizer, clean, ex.id)
        clean_ids = [ids[p] for p in response_positions(clean_labels)]
        labels.append(corrupted_token_labels(noisy_ids, clean_ids))
    return np.concatenate(labels), per_example
