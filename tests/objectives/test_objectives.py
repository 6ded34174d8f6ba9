"""Objective losses against numbers worked by hand (torchtune style), plus the lambda schedule and the registry."""

from __future__ import annotations

import math

import pytest
import torch

from forgetune import ForgetuneError, objectives
from forgetune.config import resolve
from forgetune.objectives import TokenBatch
from forgetune.schedules import linear_ramp

ALL_OBJECTIVES = ("sft", "ignore", "forget", "forget-unlikelihood", "forget-npo", "forget-constrained")
LN2, LN3, LN4 = math.log(2.0), math.log(3.0), math.log(4.0)


def build(objective: str, **kw):
    """The hand computations below use the paper's per-negative mean unless a test says otherwise."""
    if "negative_mean" in objectives.get(objective).setting_names():
        kw.setdefault("negative_mean", "negatives")
    return objectives.build(objective, kw)


def leaf(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, requires_grad=True)


def pol(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


# ---------------------------------------------------------------- schedule


@pytest.mark.parametrize(
    ("progress", "expected"),
    [(0.0, 0.1), (1.0, 0.5), (0.5, 0.3), (0.25, 0.2), (-3.0, 0.1), (-1e-9, 0.1), (1.0 + 1e-9, 0.5), (7.0, 0.5)],
)
def test_linear_ramp_interpolates_and_clamps(progress, expected):
    """lambda(t) = 0.1 + (0.5 - 0.1) * clamp(t, 0, 1): 0 -> 0.1, 0.25 -> 0.2, 0.5 -> 0.3, 1 -> 0.5; outside -> ends."""
    assert linear_ramp(progress, 0.1, 0.5) == pytest.approx(expected)


def test_linear_ramp_constant_and_decreasing():
    """start == end gives a constant; start > end ramps down: 1 + (0 - 1) * 0.25 = 0.75."""
    assert linear_ramp(0.3, 0.2, 0.2) == 0.2
    assert linear_ramp(0.25, 1.0, 0.0) == pytest.approx(0.75)


# ---------------------------------------------------------------- registry


def test_registry_lists_all_objectives():
    assert set(ALL_OBJECTIVES) <= set(objectives.names())
    assert objectives.names() == sorted(objectives.names())
    for name in ALL_OBJECTIVES:
        assert build(name).name == name


def test_registry_rejects_unknown_objective():
    with pytest.raises(ForgetuneError, match=r"unknown objective 'grad-ascent-typo'.*forget-npo"):
        build("grad-ascent-typo")


def test_objectives_declare_what_they_need():
    assert not build("sft").needs_partition
    for name in ("ignore", "forget", "forget-unlikelihood", "forget-npo", "forget-constrained"):
        assert build(name).needs_partition, name
    assert build("forget-npo").needs_base_ce
    assert build("forget-constrained").needs_base_ce
    assert not build("forget").needs_base_ce


def test_build_passes_config_values():
    obj = build("forget-npo", lambda_min=0.05, lambda_max=0.75, npo_beta=0.5)
    assert (obj.lambda_min, obj.lambda_max, obj.npo_beta) == (0.05, 0.75, 0.5)


# ---------------------------------------------------------------- sft


def test_sft_mean_ce_and_gradient():
    """ce = [1, 2, 3, 4] -> loss = 10 / 4 = 2.5; d loss / d ce_i = 1/4 for every token, polarity ignored."""
    ce = leaf([1.0, 2.0, 3.0, 4.0])
    loss, metrics = build("sft")(ce, TokenBatch(polarity=pol([1, -1, 0, -1])), progress=0.3)
    assert loss.item() == pytest.approx(2.5)
    assert metrics["ce"] == pytest.approx(2.5)
    loss.backward()
    torch.testing.assert_close(ce.grad, torch.full((4,), 0.25))


def test_sft_empty_batch_is_zero():
    """No response token at all: the loss is 0 (not NaN), still a tensor."""
    loss, _ = build("sft")(leaf([]), TokenBatch(), progress=0.0)
    assert loss.item() == 0.0


# ---------------------------------------------------------------- ignore


def test_ignore_mean_over_positives_only():
    """ce = [1, 2, 3, 4], polarity = [+1, -1, +1, 0] -> loss = (1 + 3) / 2 = 2.0.

    Gradient: 1/2 on the two positives, exactly 0 on the negative and the ignored token.
    """
    ce = leaf([1.0, 2.0, 3.0, 4.0])
    loss, metrics = build("ignore")(ce, TokenBatch(polarity=pol([1, -1, 1, 0])), progress=1.0)
    assert loss.item() == pytest.approx(2.0)
    assert metrics == {"ce_pos": pytest.approx(2.0), "tokens_pos": 2}
    loss.backward()
    assert ce.grad.tolist() == [0.5, 0.0, 0.5, 0.0]


def test_ignore_does_not_depend_on_progress():
    """Ignore has no lambda (it declares no setting): loss at t = 0 equals loss at t = 1 (= (1 + 3) / 2)."""
    ce, tokens = leaf([1.0, 9.0, 3.0]), TokenBatch(polarity=pol([1, -1, 1]))
    with pytest.raises(ForgetuneError, match="objective ignore has no setting lambda_max"):
        build("ignore", lambda_max=5.0)
    obj = build("ignore")
    assert obj(ce, tokens, 0.0)[0].item() == obj(ce, tokens, 1.0)[0].item() == pytest.approx(2.0)


def test_ignore_no_positive_gives_finite_zero():
    """All tokens negative: nothing selected, loss = 0 / max(0, 1) = 0 and no gradient reaches the CE."""
    ce = leaf([1.0, 2.0])
    loss, _ = build("ignore")(ce, TokenBatch(polarity=pol([-1, -1])), 0.5)
    assert loss.item() == 0.0
    loss.backward()
    assert ce.grad.tolist() == [0.0, 0.0]


# ---------------------------------------------------------------- forget


def test_forget_hand_computed_at_end_of_ramp():
    """ce = [1, 2, 3, 4], polarity = [+1, -1, +1, -1], lambda_min = 0.1, lambda_max = 0.5, progress = 1.

    mean CE pos = (1 + 3) / 2 = 2, mean CE neg = (2 + 4) / 2 = 3, lambda = 0.5
    loss = 2 - 0.5 * 3 = 0.5
    d loss / d ce = [1/2, -0.5/2, 1/2, -0.5/2] = [0.5, -0.25, 0.5, -0.25]
    """
    ce = leaf([1.0, 2.0, 3.0, 4.0])
    loss, m = build("forget", lambda_min=0.1, lambda_max=0.5)(ce, TokenBatch(polarity=pol([1, -1, 1, -1])), 1.0)
    assert loss.item() == pytest.approx(0.5)
    assert m["ce_pos"] == pytest.approx(2.0)
    assert m["ce_neg"] == pytest.approx(3.0)
    assert m["neg_term"] == pytest.approx(-3.0)
    assert m["lambda"] == pytest.approx(0.5)
    assert (m["tokens_pos"], m["tokens_neg"]) == (2, 2)
    loss.backward()
    torch.testing.assert_close(ce.grad, torch.tensor([0.5, -0.25, 0.5, -0.25]))


@pytest.mark.parametrize(
    ("progress", "lam", "expected"),
    [(0.0, 0.1, 1.7), (0.5, 0.3, 1.1), (1.0, 0.5, 0.5), (2.0, 0.5, 0.5), (-1.0, 0.1, 1.7)],
)
def test_forget_lambda_follows_progress(progress, lam, expected):
    """Same tokens as above (pos mean 2, neg mean 3), lambda from 0.1 to 0.5.

    t = 0: 2 - 0.1 * 3 = 1.7;  t = 0.5: lambda = 0.3, 2 - 0.9 = 1.1;  t = 1: 2 - 1.5 = 0.5 (clamped beyond).
    """
    obj = build("forget", lambda_min=0.1, lambda_max=0.5)
    loss, m = obj(leaf([1.0, 2.0, 3.0, 4.0]), TokenBatch(polarity=pol([1, -1, 1, -1])), progress)
    assert m["lambda"] == pytest.approx(lam)
    assert loss.item() == pytest.approx(expected)


def test_forget_ignored_tokens_get_no_gradient():
    """Three-way polarity [+1, 0, -1, 0], ce = [1, 5, 2, 7], lambda = 1 (min = max = 1).

    loss = 1 - 1 * 2 = -1; grad = [1, 0, -1, 0]: the ignored tokens (polarity 0) get exactly 0.
    """
    ce = leaf([1.0, 5.0, 2.0, 7.0])
    loss, m = build("forget", lambda_min=1.0, lambda_max=1.0)(ce, TokenBatch(polarity=pol([1, 0, -1, 0])), 0.2)
    assert loss.item() == pytest.approx(-1.0)
    assert (m["tokens_pos"], m["tokens_neg"]) == (1, 1)
    loss.backward()
    assert ce.grad.tolist() == [1.0, 0.0, -1.0, 0.0]


def test_forget_no_negatives_is_finite():
    """No negative in the batch: neg term = 0 / max(0, 1) = 0, so loss = mean CE pos = (1 + 3) / 2 = 2."""
    ce = leaf([1.0, 3.0])
    loss, m = build("forget", lambda_max=0.5)(ce, TokenBatch(polarity=pol([1, 1])), 1.0)
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(2.0)
    assert m["tokens_neg"] == 0
    assert m["neg_term"] == 0.0


def test_forget_no_positives_is_finite():
    """Only negatives: loss = 0 - 0.5 * (2 + 4) / 2 = -1.5."""
    loss, _ = build("forget", lambda_max=0.5)(leaf([2.0, 4.0]), TokenBatch(polarity=pol([-1, -1])), 1.0)
    assert loss.item() == pytest.approx(-1.5)


@pytest.mark.parametrize("name", ["ignore", "forget", "forget-unlikelihood", "forget-npo", "forget-constrained"])
def test_empty_token_batch_is_finite(name):
    """N = 0 response tokens: every masked mean is 0 / 1 = 0, so the loss is exactly 0."""
    ce = leaf([])
    tokens = TokenBatch(polarity=pol([]), base_ce=torch.zeros(0))
    loss, _ = build(name)(ce, tokens, 0.5)
    assert loss.item() == 0.0


# ---------------------------------------------------------------- forget-unlikelihood


def test_unlikelihood_hand_computed():
    """ce = [1, ln 2, 3, ln 4], polarity = [+1, -1, +1, -1], lambda = 0.5 at progress 1.

    p(neg) = exp(-ce) = [1/2, 1/4] -> -log(1 - p) = [ln 2, ln(4/3)], mean = ln(8/3) / 2
    loss = (1 + 3) / 2 + 0.5 * ln(8/3) / 2 = 2 + ln(8/3) / 4 ~= 2.245207
    d/dce [-log(1 - e^-ce)] = -1 / (e^ce - 1): ce = ln 2 -> -1, ce = ln 4 -> -1/3; times lambda / 2 = 0.25
    grad = [0.5, -0.25, 0.5, -1/12]
    """
    ce = leaf([1.0, LN2, 3.0, LN4])
    loss, m = build("forget-unlikelihood", lambda_max=0.5)(ce, TokenBatch(polarity=pol([1, -1, 1, -1])), 1.0)
    assert loss.item() == pytest.approx(2.0 + math.log(8.0 / 3.0) / 4.0, rel=1e-6)
    assert m["neg_term"] == pytest.approx(math.log(8.0 / 3.0) / 2.0, rel=1e-6)
    loss.backward()
    torch.testing.assert_close(ce.grad, torch.tensor([0.5, -0.25, 0.5, -1.0 / 12.0]))


def test_unlikelihood_term_is_bounded():
    """The negative term -log(1 - p) is >= 0 and finite for every ce >= 0.

    ce -> 0 means p -> 1 and -log(0) would be inf; the clamp 1 - p >= 1e-6 caps it at -log(1e-6) = 6 ln 10 ~= 13.8155.
    ce -> inf means p -> 0 and the term -> 0 from above.
    """
    obj = build("forget-unlikelihood")
    ce = torch.tensor([0.0, 1e-12, 1e-7, 1e-3, 0.5, 5.0, 50.0, 1e4])
    term = obj.negative_term(ce, TokenBatch(polarity=-torch.ones(8, dtype=torch.long)))
    assert torch.isfinite(term).all()
    assert (term >= 0).all()
    cap = 6.0 * math.log(10.0)
    torch.testing.assert_close(term[:3], torch.full((3,), cap))  # 1 - p < 1e-6 for ce < ~1e-6: clamped
    assert term.max().item() <= cap + 1e-4
    assert (term[3:6].diff() < 0).all()  # strictly decreasing once off the clamp
    assert (term.diff() <= 0).all()
    assert term[-1].item() == pytest.approx(0.0, abs=1e-12)


def test_unlikelihood_loss_and_gradient_finite_at_zero_ce():
    """A negative token already at p = 1 (ce = 0): loss = 0 + 1 * 13.8155, gradient finite (no inf / NaN)."""
    ce = leaf([0.0, 0.0])
    obj = build("forget-unlikelihood", lambda_min=1.0, lambda_max=1.0)
    loss, _ = obj(ce, TokenBatch(polarity=pol([-1, -1])), 0.0)
    assert loss.item() == pytest.approx(6.0 * math.log(10.0), rel=1e-5)
    loss.backward()
    assert torch.isfinite(ce.grad).all()


# ---------------------------------------------------------------- forget-npo


def test_npo_equals_two_over_beta_log2_at_start():
    """ce == base_ce: -(2 / beta) * log sigmoid(0) = (2 / beta) * ln 2; beta = 0.1 -> 20 ln 2 ~= 13.8629."""
    obj = build("forget-npo", npo_beta=0.1)
    ce = torch.tensor([0.3, 2.0, 7.5])
    term = obj.negative_term(ce, TokenBatch(base_ce=ce.clone()))
    torch.testing.assert_close(term, torch.full((3,), 20.0 * LN2))


def test_npo_hand_computed_loss_and_gradient():
    """beta = 1, lambda = 1, polarity = [+1, -1, -1], ce = [2, 1 + ln 3, 1 - ln 3], base_ce = [9, 1, 1].

    x = ce - base = [ln 3, -ln 3] on the negatives: sigmoid(ln 3) = 3/4, sigmoid(-ln 3) = 1/4
    term = -2 log sigmoid(x) = [2 ln(4/3), 2 ln 4], mean = ln(4/3) + ln 4 = ln(16/3)
    loss = 2 + ln(16/3) ~= 3.673976
    d term / d ce = -2 sigmoid(-x) = [-2 * 1/4, -2 * 3/4] = [-0.5, -1.5]; divided by 2 negatives -> [-0.25, -0.75]
    base_ce is data: no gradient. The positive gets 1 / 1 = 1.
    """
    ce = leaf([2.0, 1.0 + LN3, 1.0 - LN3])
    base = torch.tensor([9.0, 1.0, 1.0])
    obj = build("forget-npo", lambda_min=1.0, lambda_max=1.0, npo_beta=1.0)
    loss, m = obj(ce, TokenBatch(polarity=pol([1, -1, -1]), base_ce=base), 0.5)
    assert loss.item() == pytest.approx(2.0 + math.log(16.0 / 3.0), rel=1e-6)
    assert m["neg_term"] == pytest.approx(math.log(16.0 / 3.0), rel=1e-6)
    loss.backward()
    torch.testing.assert_close(ce.grad, torch.tensor([1.0, -0.25, -0.75]))


def test_npo_decreases_towards_zero_as_ce_grows():
    """With base_ce = 1 and beta = 0.5 the term falls monotonically from (2/beta) ln 2 at ce = 1 towards 0."""
    obj = build("forget-npo", npo_beta=0.5)
    ce = torch.tensor([1.0, 2.0, 5.0, 10.0, 50.0, 200.0])
    term = obj.negative_term(ce, TokenBatch(base_ce=torch.ones(6)))
    assert term[0].item() == pytest.approx(4.0 * LN2, rel=1e-6)
    assert (term.diff() < 0).all()
    assert (term > 0).all()
    assert term[-1].item() < 1e-6


def test_npo_lambda_ramp():
    """ce == base_ce, beta = 1: term = 2 ln 2 on the negative; pos ce = 1; lambda 0 -> 0.4.

    progress 0.5: lambda = 0.2 -> loss = 1 + 0.2 * 2 ln 2 ~= 1.277259
    """
    obj = build("forget-npo", lambda_min=0.0, lambda_max=0.4, npo_beta=1.0)
    tokens = TokenBatch(polarity=pol([1, -1]), base_ce=torch.tensor([0.0, 3.0]))
    loss, m = obj(leaf([1.0, 3.0]), tokens, 0.5)
    assert m["lambda"] == pytest.approx(0.2)
    assert loss.item() == pytest.approx(1.0 + 0.4 * LN2, rel=1e-6)


def test_negative_mean_tokens_weighs_each_token_equally():
    """ce = [1, 2, 3, 4], polarity [+1, +1, +1, -1], lambda 0.5 (progress 1, lambda_min = lambda_max = 0.5).

    'negatives': mean_pos - 0.5 * mean_neg = 2 - 0.5 * 4 = 0.0
    'tokens':   (1 + 2 + 3 - 0.5 * 4) / 4 = 4 / 4 = 1.0
    """
    ce = torch.tensor([1.0, 2.0, 3.0, 4.0])
    tokens = TokenBatch(polarity=torch.tensor([1, 1, 1, -1]))
    per_negative = build("forget", lambda_min=0.5, lambda_max=0.5)
    per_token = build("forget", lambda_min=0.5, lambda_max=0.5, negative_mean="tokens")
    assert per_negative(ce, tokens, 1.0)[0].item() == pytest.approx(0.0)
    assert per_token(ce, tokens, 1.0)[0].item() == pytest.approx(1.0)


# ---------------------------------------------------------------- forget-constrained


def test_constrained_is_built_by_name_from_the_config():
    cfg = resolve(flags={"objective": "forget-constrained", "constraint_weight": 0.5, "constraint_eta": 2.0,
                         "constraint_eps": 0.1, "npo_beta": 0.3})
    obj = objectives.build(cfg.train.objective, cfg.train.objective_args)
    assert type(obj).__name__ == "ForgetConstrained" and obj.name == "forget-constrained"
    c = obj.constraint
    assert (c.weight, c.eta, c.eps, c.min_weight, obj.npo_beta) == (0.5, 2.0, 0.1, 0.5, 0.3)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"constraint_eta": -1.0}, "constraint_eta must be a finite number >= 0"),
        ({"constraint_weight": -0.5}, "constraint_weight must be a finite number >= 0"),
        ({"constraint_eps": float("nan")}, "constraint_eps must be a finite number >= 0"),
    ],
)
def test_constrained_config_values_are_validated(flags, message):
    with pytest.raises(ForgetuneError, match=message):
        resolve(flags={"objective": "forget-constrained", **flags})


def test_constrained_hand_computed_loss_and_gradient():
    """beta = 1, w0 = 1.5, polarity = [+1, -1, -1, +1, 0], ce = [2, 1 + ln 3, 1 - ln 3, 4, 100], base = [9, 1, 1, 0, 0].

    F (negatives, as in the forget-npo test): mean(2 ln(4/3), 2 ln 4) = ln(16/3); R = (2 + 4) / 2 = 3
    loss = log F + 1.5 * log R = log ln(16/3) + 1.5 ln 3
    d loss / d ce: negatives (1 / F) * [-0.25, -0.75] (< 0: minimising RAISES their CE);
                   positives 1.5 * (1 / R) * (1 / 2) = 0.25 each (> 0: lowers their CE); the ignored token 0.
    """
    ce = leaf([2.0, 1.0 + LN3, 1.0 - LN3, 4.0, 100.0])
    tokens = TokenBatch(polarity=pol([1, -1, -1, 1, 0]), base_ce=torch.tensor([9.0, 1.0, 1.0, 0.0, 0.0]))
    obj = build("forget-constrained", constraint_weight=1.5, npo_beta=1.0)
    loss, m = obj(ce, tokens, 0.0)
    f = math.log(16.0 / 3.0)
    assert loss.item() == pytest.approx(math.log(f) + 1.5 * LN3, rel=1e-6)
    assert m["ce_pos"] == pytest.approx(3.0)
    assert m["ce_neg"] == pytest.approx(1.0)
    assert m["neg_term"] == pytest.approx(f, rel=1e-6)
    assert m["constraint_weight"] == 1.5
    assert (m["tokens_pos"], m["tokens_neg"]) == (2, 2)
    loss.backward()
    torch.testing.assert_close(ce.grad, torch.tensor([0.25, -0.25 / f, -0.75 / f, 0.25, 0.0]))
    assert ce.grad[1] < 0 and ce.grad[2] < 0 and ce.grad[0] > 0 and ce.grad[3] > 0


def test_constrained_dual_update_grows_on_a_rise_and_floors_at_w0():
    """eta = 2, eps = 0.05, w0 = 1. R: 1 -> e^0.3 (rise 0.3): w = 1 + 2 * (0.3 - 0.05) = 1.5, and the loss uses it.
    Then R -> e^-0.5 (fall 0.8): 1.5 + 2 * (-0.8 - 0.05) = -0.2 -> floored at w0 = 1, not 0."""
    obj = build("forget-constrained", constraint_weight=1.0, constraint_eta=2.0, constraint_eps=0.05)
    tokens = TokenBatch(polarity=pol([1, -1]), base_ce=torch.tensor([0.0, 5.0]))
    f = 20.0 * LN2  # the negative sits at its base: (2 / 0.1) ln 2

    loss, m = obj(leaf([1.0, 5.0]), tokens, 0.0)
    assert m["constraint_weight"] == 1.0  # first call: nothing to compare with
    assert loss.item() == pytest.approx(math.log(f), rel=1e-6)

    loss, m = obj(leaf([math.exp(0.3), 5.0]), tokens, 0.1)
    assert m["constraint_weight"] == pytest.approx(1.5, rel=1e-5)
    assert loss.item() == pytest.approx(math.log(f) + 1.5 * 0.3, rel=1e-5)

    _, m = obj(leaf([math.exp(-0.5), 5.0]), tokens, 0.2)
    assert m["constraint_weight"] == 1.0


def test_constrained_weight_stays_at_w0_when_the_positive_ce_falls():
    obj = build("forget-constrained", constraint_weight=0.7, constraint_eta=5.0)
    tokens = TokenBatch(polarity=pol([1, -1]), base_ce=torch.tensor([0.0, 1.0]))
    for value in (3.0, 2.0, 1.0, 0.5):
        _, m = obj(leaf([value, 1.0]), tokens, 0.0)
        assert m["constraint_weight"] == 0.7


def test_constrained_skips_the_dual_step_without_positives_or_gradient():
    """A batch with no positive and an evaluation call (no grad) leave w and the previous R alone:
    R 1 -> (negatives only) -> (no grad, R = e^5) -> e^0.3 gives w = 1 + 5 * 0.3 = 2.5."""
    obj = build("forget-constrained")
    base = torch.tensor([0.0, 1.0])
    obj(leaf([1.0, 1.0]), TokenBatch(polarity=pol([1, -1]), base_ce=base), 0.0)
    _, m = obj(leaf([1.0, 1.0]), TokenBatch(polarity=pol([-1, -1]), base_ce=base), 0.0)
    assert m["constraint_weight"] == 1.0
    with torch.no_grad():
        _, m = obj(torch.tensor([math.exp(5.0), 1.0]), TokenBatch(polarity=pol([1, -1]), base_ce=base), 0.0)
    assert m["constraint_weight"] == 1.0
    _, m = obj(leaf([math.exp(0.3), 1.0]), TokenBatch(polarity=pol([1, -1]), base_ce=base), 0.0)
    assert m["constraint_weight"] == pytest.approx(2.5, rel=1e-5)


def test_constrained_batch_without_negatives_is_w_log_r():
    """polarity [+1, +1, 0], ce [1, e^2 * 2 - 1, 9]: R = e^2, w0 = 0.5 -> loss = 0.5 * 2 = 1; no forget term."""
    ce = leaf([1.0, 2.0 * math.exp(2.0) - 1.0, 9.0])
    obj = build("forget-constrained", constraint_weight=0.5)
    loss, m = obj(ce, TokenBatch(polarity=pol([1, 1, 0]), base_ce=torch.zeros(3)), 0.0)
    assert loss.item() == pytest.approx(1.0, rel=1e-6)
    assert m["tokens_neg"] == 0 and m["neg_term"] == 0.0
    loss.backward()
    assert ce.grad[2] == 0.0 and (ce.grad[:2] > 0).all()


def test_constrained_batch_without_positives_is_log_f():
    """polarity [-1, 0], ce == base on the negative, beta 0.1: F = 20 ln 2 -> loss = log(20 ln 2); its gradient on the
    negative is negative (raise its CE)."""
    ce = leaf([2.0, 3.0])
    obj = build("forget-constrained", constraint_weight=4.0)
    loss, m = obj(ce, TokenBatch(polarity=pol([-1, 0]), base_ce=torch.tensor([2.0, 0.0])), 0.0)
    assert loss.item() == pytest.approx(math.log(20.0 * LN2), rel=1e-6)
    assert m["tokens_pos"] == 0 and m["constraint_weight"] == 4.0
    loss.backward()
    assert ce.grad[0] < 0 and ce.grad[1] == 0.0


# ---------------------------------------------------------------- loss truncation


def test_loss_truncation_drops_the_highest_loss_tokens_hand_computed():
    """CE = [1, 5, 2, 3, 9], fraction 0.4: floor(0.4 * 5) = 2 tokens dropped (9 and 5); loss = (1 + 2 + 3) / 3 = 2,
    and the dropped tokens get no gradient."""
    ce = leaf([1.0, 5.0, 2.0, 3.0, 9.0])
    loss, metrics = build("loss-truncation", truncation_fraction=0.4)(ce, TokenBatch(), 0.0)
    assert loss.item() == pytest.approx(2.0)
    loss.backward()
    assert ce.grad.tolist() == pytest.approx([1 / 3, 0.0, 1 / 3, 1 / 3, 0.0])
    assert metrics["tokens_dropped"] == 2 and metrics["tokens_pos"] == 3


def test_loss_truncation_keeps_everything_when_too_few_tokens_and_needs_no_partition():
    """floor(0.1 * 4) = 0 tokens dropped: plain SFT, mean (1 + 2 + 3 + 6) / 4 = 3; an empty batch is exactly 0."""
    objective = build("loss-truncation", truncation_fraction=0.1)
    assert not objective.needs_partition and not objective.needs_base_ce
    assert objective(leaf([1.0, 2.0, 3.0, 6.0]), TokenBatch(), 0.0)[0].item() == pytest.approx(3.0)
    assert objective(leaf([]), TokenBatch(), 0.0)[0].item() == 0.0
