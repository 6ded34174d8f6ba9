"""Unlearning losses against numbers worked by hand, their gradient signs, and the constrained update rules on a
2-D toy problem whose answer is known (tiny tensors only)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from forgetune import ForgetuneError, unlearning
from forgetune.objectives import TokenBatch
from forgetune.unlearning import apply_surgery, l1_penalty, prune, surgery_direction
from forgetune.unlearning.base import forget_base_nll, forget_mean, forget_sequences, retain_mean

LN2 = math.log(2.0)
ALL_METHODS = ("constrained", "constrained-surgery", "ga", "graddiff", "l1sparse", "npo", "simnpo")


def leaf(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def grad_of(loss: torch.Tensor, x: torch.Tensor) -> list[float]:
    return torch.autograd.grad(loss, x, retain_graph=True)[0].tolist()


def tokens(forget, retain=(), base=None, grad: bool = False) -> tuple[torch.Tensor, TokenBatch]:
    """Flat CE and its TokenBatch from per-sequence lists of token CEs: forget rows first (polarity -1), then retain
    rows (+1); `base`: the forget tokens' CE under the starting model, per forget row."""
    rows = [*forget, *retain]
    ce = torch.tensor([x for row in rows for x in row], dtype=torch.float64, requires_grad=grad)
    n_forget, n_retain = sum(map(len, forget)), sum(map(len, retain))
    base_ce = None if base is None else t([x for row in base for x in row] + [0.0] * n_retain)
    return ce, TokenBatch(polarity=torch.tensor([-1] * n_forget + [1] * n_retain), base_ce=base_ce,
                          seq=torch.tensor([i for i, row in enumerate(rows) for _ in row]))


# ---------------------------------------------------------------- registry and sequence sums


def test_registry_lists_every_method_and_refuses_unknown_names():
    assert set(ALL_METHODS) <= set(unlearning.names())
    assert unlearning.names() == sorted(unlearning.names())
    assert unlearning.build("npo", beta=0.2).name == "npo"
    with pytest.raises(ForgetuneError, match="unknown unlearning method 'nope'"):
        unlearning.build("nope")


def test_forget_sequences_sum_each_rows_forget_tokens_and_kept_tokens_count_as_retain():
    """Row 0: ce 1, 2, 3 with polarity -1, +1, -1 (token 2 kept) -> forget 1 + 3 = 4 over 2 tokens.
    Row 1: ce 5, forget -> 5 over 1. Row 2: retain ce 1, 3. Retain tokens: 2 (row 0) + 1 + 3 = 6 over 3 -> mean 2.
    Base ce 0.5 per forget-row token -> base sums 0.5 + 0.5 = 1 and 0.5 (the kept token's left out)."""
    ce = t([1.0, 2.0, 3.0, 5.0, 1.0, 3.0])
    batch = TokenBatch(polarity=torch.tensor([-1, 1, -1, -1, 1, 1]), base_ce=t([0.5] * 4 + [0.0] * 2),
                       seq=torch.tensor([0, 0, 0, 1, 2, 2]))
    nll, length = forget_sequences(ce, batch)
    assert nll.tolist() == [4.0, 5.0] and length.tolist() == [2.0, 1.0]
    assert forget_base_nll(ce, batch, "npo").tolist() == [1.0, 0.5]
    assert forget_mean(ce, batch).item() == pytest.approx(9.0 / 3)
    assert retain_mean(ce, batch).item() == pytest.approx(2.0)


def test_rows_without_forget_tokens_are_left_out_and_a_batch_without_any_is_refused():
    """Row 0 is all kept (+1) -> only row 1 forgets; row 0 is retain data."""
    ce = t([1.0, 2.0, 4.0])
    batch = TokenBatch(polarity=torch.tensor([1, 1, -1]), seq=torch.tensor([0, 0, 1]))
    nll, length = forget_sequences(ce, batch)
    assert nll.tolist() == [4.0] and length.tolist() == [1.0]
    assert retain_mean(ce, batch).item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="no forget token"):
        forget_sequences(ce, TokenBatch(polarity=torch.tensor([1, 1, 0]), seq=torch.tensor([0, 0, 1])))


# ---------------------------------------------------------------- losses by hand

FORGET = [[2.0], [2.0, 2.0, 2.0]]  # per-sequence NLL 2 and 6 over 1 and 3 tokens: per-token forget NLL 8 / 4 = 2
RETAIN = [[1.0, 2.0]]  # per-token retain NLL 1.5


def test_ga_is_minus_the_per_token_forget_nll_and_pushes_it_up():
    """loss = -(2 + 6) / 4 = -2; d loss / d ce_i = -1/4 < 0 for each forget token, so descent raises every one."""
    ce, batch = tokens(FORGET, grad=True)
    loss, metrics = unlearning.build("ga")(ce, batch)
    assert loss.item() == pytest.approx(-2.0)
    assert metrics["forget_nll"] == pytest.approx(2.0)
    assert grad_of(loss, ce) == pytest.approx([-0.25] * 4)


def test_graddiff_adds_the_weighted_retain_nll_and_pushes_it_down():
    """loss = -2 + 0.5 * 3 / 2 = -1.25; d/d forget ce_i = -1/4; d/d retain ce_j = 0.5 / 2 = 0.25 > 0."""
    ce, batch = tokens(FORGET, RETAIN, grad=True)
    loss, metrics = unlearning.build("graddiff", retain_weight=0.5)(ce, batch)
    assert loss.item() == pytest.approx(-1.25)
    assert metrics["retain_nll"] == pytest.approx(1.5)
    assert grad_of(loss, ce) == pytest.approx([-0.25] * 4 + [0.25] * 2)


def test_a_retain_term_without_retain_data_is_refused():
    with pytest.raises(ValueError, match="no retain token"):
        unlearning.build("graddiff")(*tokens(FORGET))


def test_npo_by_hand_and_its_gradient_raises_the_forget_nll():
    """beta 0.1, sequence NLL_theta = [5, 3] (tokens 2.5 + 2.5, 1.5 + 1.5), NLL_ref = [4, 3]:
    seq 0: -(2/0.1) log sigmoid(0.1 * 1) = 20 * log(1 + e^-0.1) = 12.887933;  seq 1: 20 * log 2 = 13.862944.
    mean = 13.375438. d/d nll_i = -(2/beta) (1 - sigmoid(beta diff_i)) beta / 2 = -(1 - sigmoid(beta diff_i)):
    -(1 - sigmoid(0.1)) = -0.475021 and -0.5, the same for each token of the sequence. The base CE gets no gradient."""
    ce, batch = tokens([[2.5, 2.5], [1.5, 1.5]], base=[[2.0, 2.0], [1.5, 1.5]], grad=True)
    batch.base_ce.requires_grad_(True)
    loss, _ = unlearning.build("npo", beta=0.1, retain_weight=0.0)(ce, batch)
    assert loss.item() == pytest.approx(13.375438406, rel=1e-8)
    assert grad_of(loss, ce) == pytest.approx([-0.475020813] * 2 + [-0.5] * 2, rel=1e-7)
    loss.backward()
    assert batch.base_ce.grad is None


def test_npo_at_the_starting_model_is_two_over_beta_log_two_plus_retain():
    """theta == base: every term is -(2/beta) log(1/2) = (2/beta) log 2 = 13.862944 at beta 0.1; retain adds 1 * 1.5."""
    ce, batch = tokens([[5.0], [3.0]], RETAIN, base=[[5.0], [3.0]])
    loss, metrics = unlearning.build("npo")(ce, batch)
    assert metrics["forget_term"] == pytest.approx(2 / 0.1 * LN2)
    assert loss.item() == pytest.approx(2 / 0.1 * LN2 + 1.5)
    with pytest.raises(ValueError, match="needs base_ce"):
        unlearning.build("npo")(*tokens([[1.0]], [[1.0]]))


def test_simnpo_by_hand_and_its_gradient_raises_the_forget_nll():
    """beta 4.5, delta 0.1, NLL = [0.2, 0.9] over [1, 3] tokens -> per token 0.2, 0.3 -> beta (x - delta) = 0.45, 0.9.
    terms (2/4.5) log(1 + e^-0.45) = 0.219222, (2/4.5) log(1 + e^-0.9) = 0.151624; mean 0.185423.
    d/d nll_i = -(1 - sigmoid(beta (x_i - delta))) / len_i (the 2/beta, beta and 1/B = 1/2 cancel to 1):
    -(1 - sigmoid(0.45)) / 1 = -0.389361, -(1 - sigmoid(0.9)) / 3 = -0.096350, for each token of the sequence."""
    ce, batch = tokens([[0.2], [0.3, 0.3, 0.3]], grad=True)
    loss, _ = unlearning.build("simnpo", delta=0.1, retain_weight=0.0)(ce, batch)
    assert loss.item() == pytest.approx(0.185422849, rel=1e-7)
    assert grad_of(loss, ce) == pytest.approx([-0.389360766] + [-0.096350166] * 3, rel=1e-7)


def test_simnpo_default_delta_zero_at_zero_nll_is_two_over_beta_log_two():
    loss, _ = unlearning.build("simnpo", retain_weight=0.0)(*tokens([[0.0] * 4]))
    assert loss.item() == pytest.approx(2 / 4.5 * LN2)


# ---------------------------------------------------------------- constrained: explicit surgery

COS120, SIN120 = -0.5, math.sqrt(3) / 2


def test_surgery_at_120_degrees_with_eps_zero_is_orthogonal_to_the_retain_gradient():
    """g_f = (1, 0), g_r = (-1/2, sqrt3/2): <g_r, g_f> = -1/2, ||g_r|| = 1 -> lambda* = 1/2,
    d = (1, 0) + 1/2 (-1/2, sqrt3/2) = (3/4, sqrt3/4); <d, g_r> = -3/8 + 3/8 = 0: no first-order retain change."""
    d = surgery_direction(t([1.0, 0.0]), t([COS120, SIN120]), eps=0.0)
    assert d.tolist() == pytest.approx([0.75, math.sqrt(3) / 4])
    assert torch.dot(d, t([COS120, SIN120])).item() == pytest.approx(0.0, abs=1e-12)


def test_surgery_with_eps_bounds_the_first_order_retain_rise_by_eps():
    """eps 0.1: lambda* = (1/2 - 0.1) / 1 = 0.4, d = (0.8, 0.4 sqrt3/2); <d, g_r> = -0.4 + 0.3 = -0.1 = -eps,
    so the step -lr d changes the retain loss by -lr <d, g_r> = +lr * eps: the allowed rise, no more."""
    g_r = t([COS120, SIN120])
    d = surgery_direction(t([1.0, 0.0]), g_r, eps=0.1)
    assert d.tolist() == pytest.approx([0.8, 0.4 * SIN120])
    assert torch.dot(d, g_r).item() == pytest.approx(-0.1)


def test_surgery_leaves_a_compatible_forget_gradient_alone():
    """At 60 degrees <g_r, g_f> = 1/2 > -eps: lambda* = -1/2 - 0.1 < 0 -> d = g_f, and <d, g_r> = 1/2 >= -eps."""
    d = surgery_direction(t([1.0, 0.0]), t([0.5, SIN120]), eps=0.1)
    assert d.tolist() == pytest.approx([1.0, 0.0])


def test_surgery_clips_the_norm_and_works_on_per_parameter_lists():
    """Split (1, 0) / (-1/2, sqrt3/2) across two 'parameters'; ||d|| = sqrt(9/16 + 3/16) = sqrt3/2 -> clip to 0.5."""
    d = surgery_direction([t([1.0]), t([0.0])], [t([COS120]), t([SIN120])], eps=0.0, max_norm=0.5)
    scale = 0.5 / (math.sqrt(3) / 2)
    assert [x.item() for x in d] == pytest.approx([0.75 * scale, math.sqrt(3) / 4 * scale])
    unclipped = surgery_direction(t([3.0, 4.0]), t([0.0, 0.0]), max_norm=10.0)
    assert unclipped.tolist() == pytest.approx([3.0, 4.0])  # g_r = 0: d = g_f, already under max_norm


def test_apply_surgery_writes_the_direction_into_grad():
    """F = theta_0 -> g_f = (1, 0); R = -theta_0/2 + sqrt3/2 theta_1 -> g_r at 120 degrees; .grad = (3/4, sqrt3/4)."""
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    metrics = apply_surgery([theta], theta[0], COS120 * theta[0] + SIN120 * theta[1], eps=0.0)
    assert theta.grad.tolist() == pytest.approx([0.75, math.sqrt(3) / 4])
    assert metrics["lambda"] == pytest.approx(0.5) and metrics["grad_dot"] == pytest.approx(-0.5)


def test_constrained_surgery_method_backward_from_a_batch():
    """GA forget term -nll_f and retain term nll_r; with nll_f = theta_0, nll_r = -theta_0/2 + sqrt3/2 theta_1 (one
    token each) g_f = (-1, 0), g_r = (-1/2, sqrt3/2): <g_r, g_f> = 1/2 > 0 -> lambda* = 0 and d = g_f."""
    theta = torch.ones(2, dtype=torch.float64, requires_grad=True)
    ce = torch.stack([theta[0], COS120 * theta[0] + SIN120 * theta[1]])
    batch = TokenBatch(polarity=torch.tensor([-1, 1]), seq=torch.tensor([0, 1]))
    method = unlearning.build("constrained-surgery", max_norm=None)
    assert method.writes_gradients
    metrics = method.backward([theta], ce, batch)
    assert theta.grad.tolist() == pytest.approx([-1.0, 0.0])
    assert metrics["lambda"] == 0.0


# ---------------------------------------------------------------- constrained: toy problem, both forms vs GA

A, B = torch.tensor([0.0, 2.0]), torch.tensor([0.0, 0.0])
START, STEPS, LR = [1.0, 0.0], 200, 0.05
BUDGET = 0.6 + 0.02  # retain starts at 0.5 * 1 + 0.1 = 0.6; allowed: a 0.02 rise (second-order drift)


def forget_loss(theta):  # a positive forget objective, minimised at A: 2.5 at the start, 0.5 on the retain circle
    return 0.5 * ((theta - A) ** 2).sum()


def retain_loss(theta):  # minimised at B; keeping it <= 0.6 keeps theta in the unit disc around B
    return 0.5 * ((theta - B) ** 2).sum() + 0.1


def descend(step) -> tuple[float, float]:
    """Runs STEPS SGD steps; `step(theta)` writes theta.grad. Returns (final forget loss, max retain loss)."""
    theta = torch.tensor(START, requires_grad=True)
    opt = torch.optim.SGD([theta], lr=LR)
    worst = retain_loss(theta).item()
    for _ in range(STEPS):
        opt.zero_grad()
        step(theta)
        opt.step()
        worst = max(worst, retain_loss(theta).item())
    return forget_loss(theta).item(), worst


def test_plain_descent_on_the_forget_loss_breaks_the_retain_budget():
    """What GA does: it reaches A (forget -> 0) and the retain loss goes to 0.5 * 4 + 0.1 = 2.1."""
    final_forget, worst_retain = descend(lambda theta: forget_loss(theta).backward())
    assert final_forget < 0.01
    assert worst_retain > 2.0


def test_explicit_surgery_lowers_the_forget_loss_within_the_retain_budget():
    """The constrained optimum is (0, 1) on the unit circle, forget loss 0.5: surgery slides along the circle."""
    final_forget, worst_retain = descend(
        lambda theta: apply_surgery([theta], forget_loss(theta), retain_loss(theta), eps=0.0, max_norm=1.0)
    )
    assert final_forget < 0.7  # from 2.5 towards 0.5
    assert worst_retain <= BUDGET


def test_implicit_constrained_lowers_the_forget_loss_within_the_retain_budget():
    # the quadratic stands in for a positive forget loss; `forget` only names the batch path, unused here
    method = unlearning.build("constrained", forget_loss="simnpo", eta=5.0, retain_weight=1.0)
    weights = []

    def step(theta):
        previous = retain_loss(theta).item()
        method.loss(forget_loss(theta), retain_loss(theta)).backward()
        # the dual step needs the retain loss after the optimiser step: measure it on a copy of that step
        after = retain_loss(theta.detach() - LR * theta.grad).item()
        weights.append(method.update(previous, after))

    final_forget, worst_retain = descend(step)
    assert final_forget < 0.7
    assert worst_retain <= BUDGET
    assert max(weights) > 1.0  # w rose while the retain loss was rising


def test_implicit_constrained_dual_update_sign_and_floor():
    """log-rise 0.1 - eps 0.02 = 0.08 -> w = 1 + 5 * 0.08 = 1.4; a fall never takes w below 0."""
    method = unlearning.build("constrained", forget_loss="npo", eta=5.0, eps=0.02)
    assert method.update(1.0, math.exp(0.1)) == pytest.approx(1.4)
    assert method.update(1.0, math.exp(-10.0)) == 0.0


def test_implicit_constrained_min_weight_floors_the_dual_variable():
    """min_weight 0.8: a fall that would take w to 1 + 5 * (-10) stops at 0.8; a rise of 0.1 then gives 0.8 + 0.5."""
    method = unlearning.build("constrained", forget_loss="npo", eta=5.0, min_weight=0.8)
    assert method.min_weight == 0.8
    assert method.update(1.0, math.exp(-10.0)) == 0.8
    assert method.update(1.0, math.exp(-0.1)) == 0.8
    assert method.update(1.0, math.exp(0.1)) == pytest.approx(1.3)
    assert method.weight >= method.min_weight
    with pytest.raises(ForgetuneError, match="min_weight must be a finite number >= 0"):
        unlearning.build("constrained", forget_loss="npo", min_weight=-1.0)


def test_implicit_constraint_loss_drops_a_missing_term():
    """w = 2: log(3) + 2 log(0.5); without retain log 3; without forget 2 log 0.5; neither is refused."""
    from forgetune.unlearning.constrained import ImplicitConstraint

    c = ImplicitConstraint(weight=2.0)
    assert c.loss(t(3.0), t(0.5)).item() == pytest.approx(math.log(3.0) + 2 * math.log(0.5))
    assert c.loss(t(3.0), None).item() == pytest.approx(math.log(3.0))
    assert c.loss(None, t(0.5)).item() == pytest.approx(2 * math.log(0.5))
    with pytest.raises(ValueError, match="a forget loss, a retain loss or both"):
        c.loss(None, None)


def test_implicit_constrained_loss_by_hand_and_its_refusals():
    """log(3 - 1) + 1 * log(0.5 - 0) = log 2 - log 2 = 0."""
    method = unlearning.build("constrained", forget_loss="npo", forget_floor=1.0)
    assert method.loss(t(3.0), t(0.5)).item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="positive forget loss"):
        method.loss(t(1.0), t(0.5))
    with pytest.raises(ValueError, match="not above m_r"):
        method.loss(t(3.0), t(0.0))
    with pytest.raises(ForgetuneError, match="positive forget loss.*'ga'"):
        unlearning.build("constrained", forget_loss="ga")


def test_implicit_constrained_call_updates_w_from_consecutive_batches():
    """First call: npo at theta == ref is 20 log 2, retain 1 -> loss log(20 log 2) + 1 * log 1, w stays 1.
    Second call, retain e^0.2: w = 1 + 5 * 0.2 = 2, loss log(20 log 2) + 2 * 0.2."""
    method = unlearning.build("constrained", forget_loss="npo")
    loss, metrics = method(*tokens([[3.0]], [[1.0]], base=[[3.0]]))
    assert loss.item() == pytest.approx(math.log(20 * LN2)) and metrics["retain_weight"] == 1.0
    loss, metrics = method(*tokens([[3.0]], [[math.exp(0.2)]], base=[[3.0]]))
    assert metrics["retain_weight"] == pytest.approx(2.0)
    assert loss.item() == pytest.approx(math.log(20 * LN2) + 0.4)


# ---------------------------------------------------------------- l1 sparse and pruning


def test_l1_penalty_decays_linearly_to_zero():
    """|(1, -2) - (0, 0)|_1 = 3 -> alpha 0.5: 1.5 at progress 0, 0.75 at 0.5, 0 at 1."""
    theta, start = leaf([1.0, -2.0]), [t([0.0, 0.0])]
    assert l1_penalty([theta], start, 0.0, 0.5).item() == pytest.approx(1.5)
    assert l1_penalty([theta], start, 0.5, 0.5).item() == pytest.approx(0.75)
    assert l1_penalty([theta], start, 1.0, 0.5).item() == 0.0
    assert grad_of(l1_penalty([theta], start, 0.0, 0.5), theta) == pytest.approx([0.5, -0.5])


def test_l1sparse_wraps_another_method_against_the_initial_parameters():
    """theta_0 = (1, -2) snapshot; theta moves to (2, -2) -> ||theta - theta_0||_1 = 1; alpha 0.5 at progress 0.5
    -> 0.25 added to GA's -2."""
    theta = leaf([1.0, -2.0])
    method = unlearning.build("l1sparse", parameters=[theta], forget_loss="ga", alpha=0.5)
    with torch.no_grad():
        theta[0] = 2.0
    loss, metrics = method(*tokens(FORGET), 0.5)
    assert loss.item() == pytest.approx(-2.0 + 0.25)
    assert metrics["l1"] == pytest.approx(0.25) and metrics["alpha"] == pytest.approx(0.25)
    loss, metrics = method(*tokens(FORGET), 1.0)
    assert metrics["l1"] == 0.0


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down, self.lm_head = nn.Linear(2, 3, bias=True), nn.Linear(3, 2, bias=False), nn.Linear(2, 2)


def test_prune_hits_the_exact_sparsity_and_keeps_the_largest_magnitudes():
    """12 linear weights (up 3x2, down 2x3; lm_head excluded) with |w| = 1..12: sparsity 0.5 zeroes |w| <= 6."""
    model = TinyModel()
    magnitudes = torch.randperm(12, generator=torch.Generator().manual_seed(0)).float() + 1
    signs = torch.tensor([1.0, -1.0]).repeat(6)
    with torch.no_grad():
        model.up.weight.copy_((magnitudes * signs)[:6].view(3, 2))
        model.down.weight.copy_((magnitudes * signs)[6:].view(2, 3))
        model.lm_head.weight.fill_(0.01)
    masks = prune(model, 0.5)
    assert set(masks) == {"up", "down"}
    kept = torch.cat([model.up.weight.flatten(), model.down.weight.flatten()])
    assert int((kept == 0).sum()) == 6
    assert sorted(kept.abs()[kept != 0].tolist()) == [7.0, 8.0, 9.0, 10.0, 11.0, 12.0]
    assert torch.equal(masks["up"], model.up.weight != 0)
    assert torch.all(model.lm_head.weight == 0.01)  # excluded
    assert model.up.bias.count_nonzero() == 3  # biases are not pruned


def test_prune_exact_count_with_ties_and_edges():
    """All weights equal: ties are broken by position, still exactly round(0.3 * 12) = 4 zeros."""
    model = TinyModel()
    with torch.no_grad():
        for layer in (model.up, model.down):
            layer.weight.fill_(1.0)
    prune(model, 0.3)
    assert int((model.up.weight == 0).sum() + (model.down.weight == 0).sum()) == 4
    assert all(mask.all() for mask in prune(TinyModel(), 0.0).values())
    with pytest.raises(ValueError, match="sparsity"):
        prune(model, 1.5)


# ---------------------------------------------------------------- wga (added as one file: unlearning/wga.py)


def test_wga_weighs_each_forget_tokens_ascent_by_its_probability_to_the_beta():
    """CE = [ln 2, ln 4] -> p = [1/2, 1/4]. beta 1: weights 1/2, 1/4 (constants) -> L_f = -(1/2 ln 2 + 1/4 ln 4) / 2
    = -(ln 2) / 2 = -0.346574; d L_f / d ce_i = -w_i / 2 = [-1/4, -1/8]: the likelier token is pushed harder.
    beta 2: weights 1/4, 1/16 -> -(1/4 ln 2 + 1/16 ln 4) / 2 = -(3/16) ln 2. beta 0 is GA: -(ln 2 + ln 4) / 2.
    The retain token (ce 1.5, weight 1) adds 1 * 1.5 and gets gradient +1."""
    ce, batch = tokens([[LN2], [2 * LN2]], [[1.5]], grad=True)
    loss, metrics = unlearning.build("wga")(ce, batch)
    assert metrics["forget_term"] == pytest.approx(-LN2 / 2)
    assert loss.item() == pytest.approx(-LN2 / 2 + 1.5)
    assert grad_of(loss, ce) == pytest.approx([-0.25, -0.125, 1.0])
    forget_only = unlearning.build("wga", beta=2.0, retain_weight=0.0)(*tokens([[LN2], [2 * LN2]]))[0]
    assert forget_only.item() == pytest.approx(-3 / 16 * LN2)
    ga_like = unlearning.build("wga", beta=0.0, retain_weight=0.0)(*tokens([[LN2], [2 * LN2]]))[0]
    assert ga_like.item() == pytest.approx(unlearning.build("ga")(*tokens([[LN2], [2 * LN2]]))[0].item())
    with pytest.raises(ForgetuneError, match="beta must be a finite number >= 0"):
        unlearning.build("wga", beta=-1.0)


def test_satimp_weighs_each_forget_tokens_ascent_by_saturation_times_importance():
    """CE = [ln 2, ln 4] -> p = [1/2, 1/4]. Defaults beta1 5, beta2 1: weights p^5 (1 - p) = [1/64, 3/4096] (constants)
    -> L_f = -(1/64 ln 2 + 3/4096 ln 4) / 2 = -(35/4096) ln 2; d L_f / d ce_i = -w_i / 2 = [-1/128, -3/8192]. The
    retain token (ce 1.5) adds 0.1 * 1.5 and gets gradient 0.1. beta1 = beta2 = 1: weights p (1 - p) = [1/4, 3/16] ->
    -(1/4 ln 2 + 3/16 ln 4) / 2 = -(5/16) ln 2. beta2 = 0 is WGA with beta = beta1."""
    ce, batch = tokens([[LN2], [2 * LN2]], [[1.5]], grad=True)
    loss, metrics = unlearning.build("satimp")(ce, batch)
    assert metrics["forget_term"] == pytest.approx(-35 / 4096 * LN2)
    assert loss.item() == pytest.approx(-35 / 4096 * LN2 + 0.15)
    assert grad_of(loss, ce) == pytest.approx([-1 / 128, -3 / 8192, 0.1])
    both_one = unlearning.build("satimp", beta1=1.0, beta2=1.0, retain_weight=0.0)(*tokens([[LN2], [2 * LN2]]))[0]
    assert both_one.item() == pytest.approx(-5 / 16 * LN2)
    no_importance = unlearning.build("satimp", beta1=2.0, beta2=0.0, retain_weight=0.0)(*tokens([[LN2], [2 * LN2]]))
    wga = unlearning.build("wga", beta=2.0, retain_weight=0.0)(*tokens([[LN2], [2 * LN2]]))
    assert no_importance[0].item() == pytest.approx(wga[0].item())
    with pytest.raises(ForgetuneError, match="beta2 must be a finite number >= 0"):
        unlearning.build("satimp", beta2=-1.0)
