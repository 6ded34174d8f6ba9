"""Training never materialises the (B, T, V) logits: the response rows go through the head a chunk at a time, each
chunk checkpointed. Same CE, losses and gradients as the full-logits path to 1e-5, for every objective."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import build_tiny_llama
from forgetune import objectives, unlearning
from forgetune.bench.data.arith import make_arith
from forgetune.data.collator import Collator, make_features
from forgetune.data.corpus import example_offsets
from forgetune.data.formats import load_examples
from forgetune.scoring.token_logps import response_token_ce, training_response_token_ce
from forgetune.trainer import flat_token_batch
from tests_helpers import write_jsonl

LOSSES = [objectives.build(name) for name in objectives.names()] + [
    unlearning.build(name) for name in ("ga", "graddiff", "npo", "simnpo", "wga", "constrained")]


@pytest.fixture(scope="module")
def batch(tmp_path_factory, tokenizer):
    """8 examples with a random polarity and base CE per response token, collated (right padding)."""
    path = write_jsonl(tmp_path_factory.mktemp("chunked") / "a.jsonl", make_arith(8, noise=0.25, seed=2))
    examples, _ = load_examples(path, tokenizer)
    offsets = example_offsets(examples)
    rng = np.random.default_rng(1)
    polarity = rng.choice([1, 1, -1, 0], size=int(offsets[-1])).astype(np.int8)
    base_ce = rng.uniform(3.0, 8.0, size=int(offsets[-1])).astype(np.float32)
    return Collator(tokenizer.pad_token_id)(make_features(examples, offsets, polarity, base_ce))


def loss_and_grads(model, batch, loss, chunked: bool):
    model.zero_grad()
    if chunked:
        ce, _ = training_response_token_ce(model, batch, model, chunk_rows=7)  # several chunks, a ragged last one
    else:
        ce = response_token_ce(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                               batch["labels"])
    value, _ = loss(ce, flat_token_batch(batch), 0.5)
    value.backward()
    return ce.detach(), value.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss", LOSSES, ids=lambda loss: loss.name)
def test_chunked_head_gives_the_full_logits_ce_loss_and_gradients(loss, batch, tokenizer):
    model = build_tiny_llama(len(tokenizer))
    ce_full, value_full, grads_full = loss_and_grads(model, batch, loss, chunked=False)
    ce_chunk, value_chunk, grads_chunk = loss_and_grads(model, batch, loss, chunked=True)
    torch.testing.assert_close(ce_chunk, ce_full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(value_chunk, value_full, rtol=1e-5, atol=1e-6)
    assert grads_chunk.keys() == grads_full.keys()
    for name, grad in grads_full.items():
        torch.testing.assert_close(grads_chunk[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_the_head_sees_one_position_in_the_forward_and_chunks_after(batch, tokenizer):
    """What makes the memory: the model's own head call gets one position per row (logits_to_keep=1), and every
    other call gets at most chunk_rows rows."""
    model = build_tiny_llama(len(tokenizer))
    shapes = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, args, out: shapes.append(tuple(out.shape)))
    ce, outputs = training_response_token_ce(model, batch, model, chunk_rows=7)
    hook.remove()
    assert outputs.logits.shape[1] == 1
    assert shapes[0] == (batch["input_ids"].shape[0], 1, len(tokenizer))
    assert all(s[0] <= 7 for s in shapes[1:]) and sum(s[0] for s in shapes[1:]) == ce.shape[0]


def test_models_that_transform_their_logits_take_the_full_forward(batch, tokenizer):
    model = build_tiny_llama(len(tokenizer))
    model.config.final_logit_softcapping = 30.0  # Gemma-2 style: the head's output is not the logits
    _, outputs = training_response_token_ce(model, batch, model)
    assert outputs.logits.shape[1] == batch["input_ids"].shape[1]
