"""Gradient accumulation equals one big batch: --batch-size 8 --grad-accum 2 applies the gradient of --batch-size 16
(same loss, same gradient to 1e-5 on the tiny model) for every loss that is a sum divided by a count; the others
(a log of means, a per-batch top-k) are averaged over micro-batches, as transformers does for any loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from conftest import build_tiny_llama
from forgetune import objectives, unlearning
from forgetune.bench.data.arith import make_arith
from forgetune.config import TrainConfig
from forgetune.data.collator import make_features
from forgetune.data.corpus import example_offsets
from forgetune.data.formats import load_examples
from forgetune.trainer import fit
from forgetune.unlearn import ForgetRetainCollator, ForgetRetainDataset, unlearn_features
from tests_helpers import write_jsonl


class KeepFirstGradient(TrainerCallback):
    """The gradient the optimiser is about to apply at step 1 (after clipping: clipping is off here)."""

    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def first_step(tokenizer, features, objective, tmp_path, batch_size: int, grad_accum: int, collator=None):
    model = build_tiny_llama(len(tokenizer)).double()  # float64: the comparison sees logic, not rounding
    cfg = TrainConfig(batch_size=batch_size, grad_accum=grad_accum, max_steps=1, max_grad_norm=0.0, logging_steps=1,
                      learning_rate=1e-3, max_negative_term=None)
    keep = KeepFirstGradient()
    _, history, _ = fit(model, tokenizer, features, objective, cfg, tmp_path / f"b{batch_size}x{grad_accum}",
                        key="k", collator=collator, callbacks=[keep])
    # the Trainer's own loss of the step (its "loss" log entry is, for unlearning, each micro-batch's mean)
    return next(h["train_loss"] for h in history if "train_loss" in h), keep.grads


def assert_same_step(big, accumulated):
    assert accumulated[0] == pytest.approx(big[0], rel=1e-5, abs=1e-5)  # graddiff: -6.03 + 6.00, float32 sums
    for name, grad in big[1].items():
        torch.testing.assert_close(accumulated[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.fixture
def scored(tmp_path, tokenizer):
    """16 arithmetic examples with a random polarity (+1 / -1 / 0) and base CE on every response token."""
    examples, _ = load_examples(write_jsonl(tmp_path / "a.jsonl", make_arith(16, noise=0.25, seed=5)), tokenizer)
    offsets = example_offsets(examples)
    rng = np.random.default_rng(0)
    polarity = rng.choice([1, 1, 1, -1, 0], size=int(offsets[-1])).astype(np.int8)
    base_ce = rng.uniform(3.0, 8.0, size=int(offsets[-1])).astype(np.float32)
    return examples, make_features(examples, offsets, polarity, base_ce)


@pytest.mark.parametrize(("objective", "settings"), [
    ("sft", {}), ("ignore", {}), ("forget", {"negative_mean": "negatives"}), ("forget-npo", {}),
    ("forget-unlikelihood", {"negative_mean": "tokens"}),
])
def test_accumulated_micro_batches_apply_the_big_batchs_gradient(objective, settings, scored, tokenizer, tmp_path):
    _, features = scored
    loss = objectives.build(objective, settings)
    assert loss.exact_under_accumulation
    assert_same_step(first_step(tokenizer, features, loss, tmp_path, 16, 1),
                     first_step(tokenizer, features, loss, tmp_path, 8, 2))


@pytest.mark.parametrize("method", ["ga", "graddiff", "npo", "simnpo", "wga"])
def test_unlearning_accumulates_like_one_batch(method, scored, tokenizer, tmp_path):
    """8 forget examples (each with its own retain draw) in one step of 8 or in two micro-batches of 4."""
    examples, _ = scored
    offsets = example_offsets(examples[:8])
    forget = unlearn_features(examples[:8], np.full(int(offsets[-1]), 5.0, np.float32),
                              np.ones(int(offsets[-1]), np.float32))
    dataset = ForgetRetainDataset(forget, unlearn_features(examples[8:]))
    collator = ForgetRetainCollator(tokenizer.pad_token_id)
    loss = unlearning.build(method)
    assert loss.exact_under_accumulation

    def step(batch_size, grad_accum):
        torch.manual_seed(0)  # the retain draws: the same examples whichever way the step is cut
        return first_step(tokenizer, dataset, loss, tmp_path, batch_size, grad_accum, collator)

    assert_same_step(step(8, 1), step(4, 2))


def test_a_loss_that_is_not_a_sum_is_averaged_over_micro_batches():
    """log F + w log R and a per-batch top-k have no exact split: they keep transformers' average."""
    assert not objectives.build("forget-constrained").exact_under_accumulation
    assert not objectives.build("loss-truncation").exact_under_accumulation
    assert not unlearning.build("constrained").exact_under_accumulation
