"""Training never materialises the (B, T, V) logits: the response rows go through the head a chunk at a time, each
chunk checkpointed; the tokens every row starts with run once per batch (share_prefix). Same CE, losses and gradients
as the full-logits path to 1e-5, for every objective."""

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
from forgetune.scoring.token_logps import response_token_ce, shared_start, training_response_token_ce
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


def loss_and_grads(model, batch, loss, chunked: bool, share_prefix: bool = False):
    model.zero_grad()
    if chunked:  # several chunks, a ragged last one
        ce, _ = training_response_token_ce(model, batch, model, chunk_rows=7, share_prefix=share_prefix)
    else:
        ce = response_token_ce(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                               batch["labels"])
    value, _ = loss(ce, flat_token_batch(batch), 0.5)
    value.backward()
    return ce.detach(), value.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("share_prefix", [False, True], ids=["per-row", "shared-prefix"])
@pytest.mark.parametrize("loss", LOSSES, ids=lambda loss: loss.name)
def test_chunked_head_gives_the_full_logits_ce_loss_and_gradients(loss, share_prefix, batch, tokenizer):
    model = build_tiny_llama(len(tokenizer))
    ce_full, value_full, grads_full = loss_and_grads(model, batch, loss, chunked=False)
    ce_chunk, value_chunk, grads_chunk = loss_and_grads(model, batch, loss, chunked=True, share_prefix=share_prefix)
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


def test_shared_start_counts_the_tokens_every_row_begins_with_padding_excluded():
    ids = torch.tensor([[5, 6, 7, 8, 0], [5, 6, 7, 9, 9], [5, 6, 7, 8, 1]])
    full = torch.ones_like(ids)
    assert shared_start(ids, full) == 3
    assert shared_start(ids[[0, 2]], full[[0, 2]]) == 4
    assert shared_start(ids[:1], torch.tensor([[1, 1, 0, 0, 0]])) == 2  # padding is never shared
    assert shared_start(ids, torch.tensor([[0, 1, 1, 1, 1]] * 3)) == 0  # left padding: nothing in common


def decoder_calls(model, batch, **kwargs) -> list[tuple[int, ...]]:
    shapes = []
    hook = model.get_decoder().register_forward_hook(lambda m, args, out: shapes.append(tuple(out[0].shape[:2])))
    training_response_token_ce(model, batch, model, **kwargs)
    hook.remove()
    return shapes


def test_the_shared_start_runs_once_and_each_row_continues_from_it(batch, tokenizer):
    """What makes the time: the decoder sees the common start for one row, then every row's rest; the chat template's
    opening is the arith batch's common start."""
    rows, length = batch["input_ids"].shape
    start = shared_start(batch["input_ids"], batch["attention_mask"])
    assert 0 < start < length and (batch["labels"][:, :start] == -100).all()
    model = build_tiny_llama(len(tokenizer))
    assert decoder_calls(model, batch, share_prefix=True) == [(1, start), (rows, length - start)]
    assert decoder_calls(model, batch) == [(rows, length)]
    model.gradient_checkpointing_enable()  # its recomputation would write the cache twice: one pass
    assert decoder_calls(model, batch, share_prefix=True) == [(rows, length)]
    model.gradient_checkpointing_disable()
    shuffled = {k: v.clone() for k, v in batch.items()}
    shuffled["input_ids"][0, 0] += 1  # no token in common
    assert decoder_calls(model, shuffled, share_prefix=True) == [(rows, length)]


def test_a_lora_model_shares_the_start_with_the_same_ce_and_adapter_gradients(batch, tokenizer):
    """LoRA (PEFT's wrapper passes the cache through to the model): the shared start runs once and the adapters get
    the gradients of the per-row pass."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(build_tiny_llama(len(tokenizer)), LoraConfig(task_type="CAUSAL_LM", r=4,
                                                                          target_modules="all-linear",
                                                                          init_lora_weights=False))
    results = []
    for share_prefix in (False, True):
        model.zero_grad()
        ce, _ = training_response_token_ce(model, batch, model, share_prefix=share_prefix)
        ce.mean().backward()
        results.append((ce.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (ce_rows, grads_rows), (ce_shared, grads_shared) = results
    torch.testing.assert_close(ce_shared, ce_rows, rtol=1e-5, atol=1e-6)
    assert grads_rows and all("lora_" in name for name in grads_rows) and grads_shared.keys() == grads_rows.keys()
    for name, grad in grads_rows.items():
        torch.testing.assert_close(grads_shared[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    start = shared_start(batch["input_ids"], batch["attention_mask"])
    assert decoder_calls(model, batch, share_prefix=True)[0] == (1, start)
