"""The positive/negative partition: exact counts, deterministic ties, granularity and the three-way split."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from forgetune import partition_polarity, partition_tokens
from forgetune.scoring.partition import num_positive


def reference_partition(scores: np.ndarray, rho_num: int, rho_den: int) -> np.ndarray:
    """Top floor(rho * N) by a stable sort of -scores: the plainest statement of the rule (earlier token wins ties)."""
    k = (rho_num * len(scores)) // rho_den
    out = np.zeros(len(scores), dtype=bool)
    out[np.argsort(-scores, kind="stable")[:k]] = True
    return out


def test_rho_zero_and_one():
    scores = np.array([0.3, -1.0, 2.0, 0.0])
    assert partition_tokens(scores, 0.0).tolist() == [False] * 4
    assert partition_tokens(scores, 1.0).tolist() == [True] * 4


def test_returns_bool_mask_in_corpus_order():
    """scores [0.1, 0.9, 0.5, 0.7], rho = 0.5 -> k = 2: the two largest (0.9 at 1, 0.7 at 3)."""
    mask = partition_tokens(np.array([0.1, 0.9, 0.5, 0.7]), 0.5)
    assert mask.dtype == bool
    assert mask.tolist() == [False, True, False, True]


@pytest.mark.parametrize(
    ("rho", "n", "k"),
    [(0.29, 100, 29), (0.57, 100, 57), (0.58, 100, 58), (0.7, 10, 7), (0.3, 10, 3), (0.1, 30, 3), (0.7, 3, 2),
     (0.5, 3, 1), (0.999, 100, 99), (0.01, 99, 0), (0.33, 3, 0), (0.34, 3, 1)],
)
def test_exact_count_floor_rho_n(rho, n, k):
    """floor(rho * N) computed on the decimal rho: 0.29 * 100 is 29 although the float product is 28.999999999999996."""
    scores = np.random.default_rng(0).normal(size=n)
    assert num_positive(n, rho) == k
    assert int(partition_tokens(scores, rho).sum()) == k


def test_float_product_pitfall_is_avoided():
    """The case the Fraction arithmetic exists for: math.floor(0.29 * 100) == 28 in binary floating point."""
    assert math.floor(0.29 * 100) == 28
    assert int(partition_tokens(np.zeros(100), 0.29).sum()) == 29


def test_all_equal_scores_take_first_k():
    """Every score ties: the first floor(0.5 * 7) = 3 tokens in corpus order are positive."""
    assert partition_tokens(np.ones(7), 0.5).tolist() == [True] * 3 + [False] * 4


def test_ties_at_threshold_go_to_earliest_tokens():
    """scores [1, 5, 3, 3, 0, 3], rho = 0.5 -> k = 3: 5 wins outright, then two of the three 3's: indices 2 and 3."""
    mask = partition_tokens(np.array([1.0, 5.0, 3.0, 3.0, 0.0, 3.0]), 0.5)
    assert mask.tolist() == [False, True, True, True, False, False]


def test_infinite_scores_are_ranked():
    mask = partition_tokens(np.array([-np.inf, np.inf, 0.0, 1.0]), 0.5)
    assert mask.tolist() == [False, True, False, True]


@pytest.mark.parametrize("n", [0, 1, 2])
@pytest.mark.parametrize("rho", [0.0, 0.5, 0.7, 1.0])
def test_tiny_n(n, rho):
    """N = 0, 1, 2: the count is still floor(rho * N) (e.g. N = 2, rho = 0.7 -> 1; N = 1, rho = 0.5 -> 0)."""
    scores = np.arange(n, dtype=np.float64)[::-1].copy()  # descending: the positives are the first k
    k = (round(rho * 10) * n) // 10
    mask = partition_tokens(scores, rho)
    assert mask.shape == (n,)
    assert mask.tolist() == [True] * k + [False] * (n - k)


def test_nan_rejected():
    with pytest.raises(ValueError, match="NaN"):
        partition_tokens(np.array([0.1, np.nan, 0.3]), 0.5)


@pytest.mark.parametrize("rho", [-0.01, 1.01, 1.5, -1.0])
def test_rho_outside_unit_interval_rejected(rho):
    with pytest.raises(ValueError, match="rho must be in"):
        partition_tokens(np.zeros(4), rho)


def test_non_flat_scores_rejected():
    with pytest.raises(ValueError, match="flat"):
        partition_tokens(np.zeros((2, 2)), 0.5)


def test_accepts_lists_and_float32():
    """rho = 0.67 over 3 -> floor(2.01) = 2; rho = 0.34 -> floor(1.02) = 1."""
    assert partition_tokens([3.0, 1.0, 2.0], 0.67).tolist() == [True, False, True]
    assert partition_tokens(np.array([3, 1, 2], dtype=np.float32), 0.34).tolist() == [True, False, False]


# Scores drawn from a small set so that ties are frequent; rho = num / den, a short decimal.
score_arrays = hnp.arrays(
    np.float64, st.integers(0, 60), elements=st.sampled_from([-2.0, -0.5, 0.0, 0.25, 1.0, 3.0]) | st.floats(-5, 5)
)


@settings(max_examples=300, deadline=None)
@given(scores=score_arrays, num=st.integers(0, 100), den=st.sampled_from([10, 100, 1000]))
def test_partition_property(scores, num, den):
    """count == floor(rho N); min(positive scores) >= max(negative scores); equal to the stable-argsort reference."""
    if num > den:
        num = den
    rho = num / den
    mask = partition_tokens(scores, rho)
    assert int(mask.sum()) == (num * len(scores)) // den
    if mask.any() and (~mask).any():
        assert scores[mask].min() >= scores[~mask].max()
    np.testing.assert_array_equal(mask, reference_partition(scores, num, den))


# ---------------------------------------------------------------- partition_polarity


def test_two_way_assigns_every_token():
    """Global, rho = 0.5 over 6 tokens: 3 positives (the largest), the 3 others negative; no 0 anywhere."""
    scores = np.array([0.5, -1.0, 2.0, 0.1, 3.0, -0.2])
    polarity = partition_polarity(scores, np.array([0, 2, 6]), 0.5)
    assert polarity.dtype == np.int8
    assert polarity.tolist() == [1, -1, 1, -1, 1, -1]
    assert set(np.unique(polarity)) <= {1, -1}


@settings(max_examples=50, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 6), min_size=1, max_size=8),
    rho=st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]),
    granularity=st.sampled_from(["global", "sequence", "batch"]),
    data=st.data(),
)
def test_two_way_never_drops_a_token(lengths, rho, granularity, data):
    n = sum(lengths)
    scores = np.array(data.draw(st.lists(st.floats(-3, 3), min_size=n, max_size=n)), dtype=np.float64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    polarity = partition_polarity(scores, offsets, rho, granularity=granularity, batch_size=3)
    assert polarity.shape == (n,)
    assert np.isin(polarity, [1, -1]).all()


def test_sequence_granularity_ranks_within_each_example():
    """Example 0 scores [10, 11, 12, 13] and example 1 scores [-5, -4]; rho = 0.5.

    Global: the top 3 of 6 are 11, 12, 13, all in example 0.
    Per sequence: the top 2 of 4 in example 0 (12, 13) and the top 1 of 2 in example 1 (-4).
    """
    scores = np.array([10.0, 11.0, 12.0, 13.0, -5.0, -4.0])
    offsets = np.array([0, 4, 6])
    assert partition_polarity(scores, offsets, 0.5).tolist() == [-1, 1, 1, 1, -1, -1]
    assert partition_polarity(scores, offsets, 0.5, granularity="sequence").tolist() == [-1, -1, 1, 1, -1, 1]


def test_sequence_granularity_floor_per_example():
    """Lengths 3, 1, 0, 2 with rho = 0.5 -> floor per example: 1, 0, 0, 1 positives (global would give 3)."""
    scores = np.array([1.0, 2.0, 3.0, 9.0, 5.0, 4.0])
    offsets = np.array([0, 3, 4, 4, 6])
    polarity = partition_polarity(scores, offsets, 0.5, granularity="sequence")
    assert polarity.tolist() == [-1, -1, 1, -1, 1, -1]


def test_batch_granularity_groups_consecutive_examples():
    """5 examples of 2 tokens, batch_size 2 -> groups {0, 1}, {2, 3}, {4}; rho = 0.5 ranks within each group.

    group 0 scores [0, 1, 2, 3] -> top 2: 2, 3; group 1 [10, 11, 12, 13] -> 12, 13; group 2 [-1, -2] -> -1.
    """
    scores = np.array([0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0, -1.0, -2.0])
    offsets = np.arange(0, 11, 2)
    polarity = partition_polarity(scores, offsets, 0.5, granularity="batch", batch_size=2)
    assert polarity.tolist() == [-1, -1, 1, 1, -1, -1, 1, 1, 1, -1]


def test_batch_granularity_with_one_big_batch_is_global():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=40)
    offsets = np.array([0, 5, 12, 20, 33, 40])
    np.testing.assert_array_equal(
        partition_polarity(scores, offsets, 0.3, granularity="batch", batch_size=16),
        partition_polarity(scores, offsets, 0.3, granularity="global"),
    )


def test_unknown_granularity_rejected():
    with pytest.raises(ValueError, match="granularity"):
        partition_polarity(np.zeros(3), np.array([0, 3]), 0.5, granularity="token")


def test_three_way_split():
    """rho = 0.5 over scores [3, -1, 0, 2, -0.5, 0.5, 1, -2] -> positives 3, 2, 0.5, 1 (k = 4).

    Non-positives: -1 -> -1 (< 0), 0 -> 0 (>= 0 is ignored), -0.5 -> -1, -2 -> -1.
    """
    scores = np.array([3.0, -1.0, 0.0, 2.0, -0.5, 0.5, 1.0, -2.0])
    polarity = partition_polarity(scores, np.array([0, 8]), 0.5, negative_below=0.0)
    assert polarity.tolist() == [1, -1, 0, 1, -1, 1, 1, -1]


def test_three_way_never_demotes_positives():
    """rho = 1: everything is positive, even scores below tau."""
    scores = np.array([-3.0, -2.0, 5.0])
    assert partition_polarity(scores, np.array([0, 3]), 1.0, negative_below=0.0).tolist() == [1, 1, 1]


def test_three_way_threshold_other_than_zero():
    """tau = -1, rho = 0.25 over [4, 0, -1, -3]: 4 positive; 0 and -1 are >= tau -> ignored; -3 -> negative."""
    polarity = partition_polarity(np.array([4.0, 0.0, -1.0, -3.0]), np.array([0, 4]), 0.25, negative_below=-1.0)
    assert polarity.tolist() == [1, 0, 0, -1]


def test_three_way_neutral_learn_turns_ignored_into_positive():
    """scores [3, 2, 0.5, -1], rho 0.5 -> positives {3, 2}; tau 0: -1 negative; 0.5 neutral -> learned (+1)."""
    from forgetune.scoring.partition import partition_polarity

    scores = np.array([3.0, 2.0, 0.5, -1.0])
    offsets = np.array([0, 4])
    ignore = partition_polarity(scores, offsets, 0.5, negative_below=0.0)
    learn = partition_polarity(scores, offsets, 0.5, negative_below=0.0, neutral="learn")
    assert ignore.tolist() == [1, 1, 0, -1]
    assert learn.tolist() == [1, 1, 1, -1]


def test_example_polarity_drops_every_flagged_example_whole_and_learns_the_rest():
    from forgetune.scoring.partition import example_polarity

    # three examples of 2, 3 and 1 tokens: the second has a negative, the first an ignored (neutral) token
    polarity = np.array([1, 0, 1, -1, 1, 1], dtype=np.int8)
    offsets = np.array([0, 2, 5, 6])
    assert example_polarity(polarity, offsets).tolist() == [1, 1, 0, 0, 0, 1]
    assert example_polarity(np.array([-1], dtype=np.int8), np.array([0, 1])).tolist() == [0]
