"""Membership inference and forget quality: per-token stats against hand values, score formulas, AUROC, KS p-value."""

from __future__ import annotations

import math
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from forgetune.data.corpus import IGNORE_INDEX, Example
from forgetune.data.formats import Record, tokenize_records
from forgetune.metrics import mia
from forgetune.metrics.mia import (
    example_losses,
    forget_quality,
    membership_scores,
    mia_auc,
    mia_report,
    token_stats,
)
from forgetune.models import load_model
from forgetune.scoring.scorer import token_ce

# Next-token distributions of the fake model, one row per previous token (V = 4); logits = log of the probabilities.
PROBS = np.array([
    [0.25, 0.25, 0.25, 0.25],  # after 0: uniform
    [0.1, 0.2, 0.3, 0.4],  # after 1
    [0.4, 0.3, 0.2, 0.1],  # after 2
    [0.1, 0.1, 0.1, 0.7],  # after 3
])


class TableModel(torch.nn.Module):
    """logits[b, t] = log PROBS[input_ids[b, t]]: the distribution of the token at t + 1 given only the token at t."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(np.log(PROBS), dtype=torch.float32), requires_grad=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[input_ids])


def example(input_ids: list[int], labels: list[int]) -> Example:
    return Example(id="x", input_ids=input_ids, labels=labels, prompt_messages=[])


def hand_mu_sigma(p: np.ndarray) -> tuple[float, float]:
    """mu = sum p log p, sigma = sqrt(sum p (log p)^2 - mu^2): the uncentred form, unlike the code's centred one."""
    mu = float((p * np.log(p)).sum())
    return mu, math.sqrt(max(float((p * np.log(p) ** 2).sum()) - mu**2, 0.0))


# A: prompt [0, 1], response [2, 3]. t = 2 is predicted by logits[1] (after token 1): p(2) = 0.3; the misaligned
#    logits[2] (after token 2) would give p(2) = 0.2. t = 3 by logits[2]: p(3) = 0.1; misaligned logits[3]: 0.7.
# B: every label set, but position 0 is never scored. t = 1 by logits[0] (after 3): p(0) = 0.1; t = 2 by logits[1]
#    (after 0, uniform): p(1) = 0.25, mu = -ln 4, sigma = 0.
EX_A = example([0, 1, 2, 3], [IGNORE_INDEX, IGNORE_INDEX, 2, 3])
EX_B = example([3, 0, 1], [3, 0, 1])


@pytest.mark.parametrize("batch_size", [1, 2])
def test_token_stats_hand_values_and_alignment(batch_size):
    a, b = token_stats(TableModel(), [EX_A, EX_B], pad_token_id=0, batch_size=batch_size)
    assert all(v.dtype == np.float64 for s in (a, b) for v in s.values())

    np.testing.assert_allclose(a["logp"], [math.log(0.3), math.log(0.1)], rtol=1e-6)
    # the misaligned reading (logits[t] for the token at t) would have given ln 0.2 and ln 0.7
    assert not np.allclose(a["logp"], [math.log(0.2), math.log(0.7)])
    mu1, sigma1 = hand_mu_sigma(PROBS[1])
    mu2, sigma2 = hand_mu_sigma(PROBS[2])
    np.testing.assert_allclose(a["mu"], [mu1, mu2], rtol=1e-6)
    np.testing.assert_allclose(a["sigma"], [sigma1, sigma2], rtol=1e-5)

    assert b["logp"].shape == (2,)  # position 0 is a response label, yet unscored
    np.testing.assert_allclose(b["logp"], [math.log(0.1), -math.log(4.0)], rtol=1e-6)
    mu3, sigma3 = hand_mu_sigma(PROBS[3])
    np.testing.assert_allclose(b["mu"], [mu3, -math.log(4.0)], rtol=1e-6)
    np.testing.assert_allclose(b["sigma"], [sigma3, 0.0], rtol=1e-5, atol=1e-6)
    # a spot value written out: after token 3, mu = 3 * 0.1 ln 0.1 + 0.7 ln 0.7
    assert mu3 == pytest.approx(0.3 * math.log(0.1) + 0.7 * math.log(0.7))


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return load_model(tiny_model_dir).eval()


@pytest.fixture(scope="module")
def tiny_examples(tokenizer) -> list[Example]:
    """Five conversations of different lengths, not in length order, so batching reorders them."""
    answers = ["Yes.", "The answer is 144, as computed above.", "No", "Paris is the capital of France.", "42 and 7"]
    records = [Record(str(i), [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": a}],
                      f"m:{i}") for i, a in enumerate(answers)]
    examples, _ = tokenize_records(records, tokenizer, max_length=128)
    assert len({len(ex.input_ids) for ex in examples}) == len(examples)
    return examples


def test_token_stats_batching_and_padding_do_not_change_stats(tiny_model, tiny_examples, tokenizer):
    alone = token_stats(tiny_model, tiny_examples, tokenizer.pad_token_id, batch_size=1)
    batched = token_stats(tiny_model, tiny_examples, tokenizer.pad_token_id, batch_size=3)
    for ex, s1, s3 in zip(tiny_examples, alone, batched, strict=True):
        assert s1["logp"].shape == (ex.num_response_tokens,)  # results come back in `examples` order
        for name in ("logp", "mu", "sigma"):
            np.testing.assert_allclose(s3[name], s1[name], rtol=1e-5, atol=1e-6)


def test_token_stats_on_tiny_llama_bounds_and_agree_with_scorer(tiny_model, tiny_examples, tokenizer):
    stats = token_stats(tiny_model, tiny_examples, tokenizer.pad_token_id, batch_size=2)
    for s in stats:
        assert (s["sigma"] >= 0).all()
        assert (s["mu"] <= 0).all()
        assert (s["logp"] <= 0).all()
        assert np.isfinite(np.concatenate(list(s.values()))).all()
    # -logp is the scorer's per-token CE
    ce = token_ce(tiny_model, tiny_examples, tokenizer.pad_token_id, batch_size=2)
    np.testing.assert_allclose(-np.concatenate([s["logp"] for s in stats]), ce, rtol=1e-4, atol=1e-5)


def stats_of(logp, mu=None, sigma=None) -> dict[str, np.ndarray]:
    logp = np.asarray(logp, dtype=np.float64)
    return {"logp": logp, "mu": np.zeros_like(logp) if mu is None else np.asarray(mu, dtype=np.float64),
            "sigma": np.ones_like(logp) if sigma is None else np.asarray(sigma, dtype=np.float64)}


def test_min_k_takes_the_lowest_ceil_k_n():
    """n = 5, k = 0.4 -> the 2 lowest logp, -5 and -4; with mu = -1, sigma = 2 the calibrated values are
    (logp + 1) / 2 = [0, -2, -0.5, -1.5, -1], whose 2 lowest are -2 and -1.5."""
    logp = [-1.0, -5.0, -2.0, -4.0, -3.0]
    plain = membership_scores([stats_of(logp)], ["t"], k=0.4)
    assert plain["min_k"][0] == pytest.approx(-4.5)
    assert plain["min_k_plus_plus"][0] == pytest.approx(-4.5)  # mu = 0, sigma = 1: the same values
    calibrated = membership_scores([stats_of(logp, mu=[-1.0] * 5, sigma=[2.0] * 5)], ["t"], k=0.4)
    assert calibrated["min_k_plus_plus"][0] == pytest.approx(-1.75)
    assert calibrated["min_k"][0] == pytest.approx(-4.5)  # Min-K% ignores mu and sigma


def test_min_k_counts_are_exact_and_never_empty():
    """0.7 * 10 is 7.000000000000001 in floating point: still 7 tokens. One token at k = 0.4: that one token."""
    ten = membership_scores([stats_of(-np.arange(1.0, 11.0))], ["t"], k=0.7)
    assert ten["min_k"][0] == pytest.approx(-7.0)  # mean of -10 .. -4
    one = membership_scores([stats_of([-2.5])], ["t"], k=0.4)
    assert one["min_k"][0] == -2.5
    whole = membership_scores([stats_of([-1.0, -2.0, -6.0])], ["t"], k=1.0)
    assert whole["min_k"][0] == pytest.approx(-3.0)


def test_min_k_plus_plus_guards_zero_sigma():
    """sigma = 0 (one-hot prediction) divides by the epsilon instead: (-2 - -1) / eps for the lower token."""
    scores = membership_scores([stats_of([-1.0, -2.0], mu=[-1.0, -1.0], sigma=[0.0, 0.0])], ["t"], k=0.5)
    assert scores["min_k_plus_plus"][0] == pytest.approx(-1.0 / mia._SIGMA_EPS)


def test_loss_and_zlib_formulas_and_sign():
    text = "hello hello hello world"
    s = membership_scores([stats_of([-1.0, -2.0, -3.0])], [text])
    assert s["loss"][0] == pytest.approx(-2.0)
    assert s["zlib"][0] == pytest.approx(-6.0 / len(zlib.compress(text.encode("utf-8"))))
    # lower NLL = higher score under every attack
    member, nonmember = stats_of([-0.1, -0.2, -0.3]), stats_of([-3.0, -4.0, -5.0])
    both = membership_scores([member, nonmember], [text, text])
    for name in mia.SCORES:
        assert both[name][0] > both[name][1], name


def test_membership_scores_rejects_mismatch_and_empty():
    with pytest.raises(ValueError, match="texts"):
        membership_scores([stats_of([-1.0])], ["a", "b"])
    with pytest.raises(ValueError, match="no scored response token"):
        membership_scores([stats_of([])], ["a"])
    with pytest.raises(ValueError, match="k must be"):
        membership_scores([stats_of([-1.0])], ["a"], k=0.0)


def test_mia_auc_direction_and_ties():
    assert mia_auc(np.array([3.0, 4.0, 5.0]), np.array([0.0, 1.0, 2.0])) == 1.0
    assert mia_auc(np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.0, 2.0])) == 0.5
    assert mia_auc(np.array([0.0, 1.0, 2.0]), np.array([3.0, 4.0, 5.0])) == 0.0
    # 2 members x 2 non-members: (1 beats both) + (0.5 ties one, beats none) -> (2 + 0.5) / 4
    assert mia_auc(np.array([3.0, 1.0]), np.array([1.0, 2.0])) == pytest.approx(0.625)


def test_mia_report_separated_and_identical_sets():
    texts = ["alpha beta", "gamma delta epsilon", "zeta"]
    members = [stats_of([-0.1, -0.2]), stats_of([-0.3, -0.1, -0.2]), stats_of([-0.05])]
    nonmembers = [stats_of([-3.0, -4.0]), stats_of([-5.0, -2.5, -3.5]), stats_of([-6.0])]
    report = mia_report(members, texts, nonmembers, texts)
    assert report == {"mia_loss": 1.0, "mia_zlib": 1.0, "mia_min_k": 1.0, "mia_min_k_plus_plus": 1.0}
    same = mia_report(members, texts, members, texts)
    assert set(same.values()) == {0.5}


def test_example_losses_is_mean_nll():
    np.testing.assert_allclose(example_losses([stats_of([-1.0, -3.0]), stats_of([-0.5])]), [2.0, 0.5])


def test_forget_quality_ks_p_value():
    rng = np.random.default_rng(0)
    sample = rng.normal(2.0, 0.5, size=50)
    assert forget_quality(sample, sample.copy()) == pytest.approx(1.0)
    separated = forget_quality(rng.normal(0.5, 0.1, size=50), rng.normal(3.0, 0.1, size=50))
    assert separated < 1e-3
    with pytest.raises(ValueError, match="non-empty"):
        forget_quality(np.array([]), sample)
