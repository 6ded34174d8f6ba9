"""Training never materialises the (B, T, V) logits: the response rows go through the head a chunk at a time, each
chunk checkpointed; the tokens every row starts with run once per batch (share_prefix); rows of different lengths run
packed in one row without padding (padding_free). Same CE, losses and gradients as the full-logits path to 1e-5, for
every objective."""

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
from forgetune.scoring import token_logps
from forgetune.scoring.token_logps import response_token_ce, shared_start, training_response_token_ce
from forgetune.trainer import flat_token_batch
from tests_helpers import write_jsonl

LOSSES = [objectives.build(name) for name in objectives.names()] + [
    unlearning.build(name) for name in ("ga", "graddiff", "npo", "simnpo", "wga", "constrained")]


def collated(path, tokenizer):
    """The file's examples with a random polarity and base CE per response token, collated (right padding)."""
    examples, _ = load_examples(path, tokenizer)
    offsets = example_offsets(examples)
    rng = np.random.default_rng(1)
    polarity = rng.choice([1, 1, -1, 0], size=int(offsets[-1])).astype(np.int8)
    base_ce = rng.uniform(3.0, 8.0, size=int(offsets[-1])).astype(np.float32)
    return Collator(tokenizer.pad_token_id)(make_features(examples, offsets, polarity, base_ce))


@pytest.fixture(scope="module")
def batch(tmp_path_factory, tokenizer):
    """8 arith examples: nearly one length, a long common start (the chat template)."""
    return collated(write_jsonl(tmp_path_factory.mktemp("chunked") / "a.jsonl", make_arith(8, noise=0.25, seed=2)),
                    tokenizer)


def ragged_rows() -> list[dict[str, str]]:
    """8 examples of 1 to 36 answer words after a long common instruction: most of a padded batch is padding."""
    instruction = "Answer in words, one word for each number, and nothing else. Count from one to"
    return [{"prompt": f"{instruction} {n}.", "completion": " ".join(["one"] * n)} for n in (1, 36, 3, 20, 7, 2, 12, 5)]


@pytest.fixture(scope="module")
def ragged(tmp_path_factory, tokenizer):
    return collated(write_jsonl(tmp_path_factory.mktemp("ragged") / "r.jsonl", ragged_rows()), tokenizer)


@pytest.fixture
def always_pack(monkeypatch):
    """Packing where the cost model would keep the padded batch (the 32-wide test model's attention is never cheap
    next to its tiny matmuls): the tests check the packed path's numbers, `_packing_pays` is tested on its own."""
    monkeypatch.setattr(token_logps, "_packing_pays", lambda *args: True)


def loss_and_grads(model, batch, loss, chunked: bool, share_prefix: bool = False, padding_free: bool = False):
    model.zero_grad()
    if chunked:  # several chunks, a ragged last one
        ce, _ = training_response_token_ce(model, batch, model, chunk_rows=7, share_prefix=share_prefix,
                                           padding_free=padding_free)
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


@pytest.mark.parametrize("rowwise", [True, False], ids=["rows-apart", "dense-mask"])
@pytest.mark.parametrize("share_prefix", [False, True], ids=["packed", "packed-after-shared-start"])
@pytest.mark.parametrize("loss", LOSSES, ids=lambda loss: loss.name)
def test_packed_rows_give_the_full_logits_ce_loss_and_gradients(loss, share_prefix, rowwise, ragged, tokenizer,
                                                                always_pack, monkeypatch):
    """Packed rows attended apart (SDPA, the default) or under the dense mask alone (other attentions)."""
    if not rowwise:
        monkeypatch.setattr(token_logps, "_rowwise_possible", lambda *args: False)
    model = build_tiny_llama(len(tokenizer))
    calls = decoder_calls(model, ragged, share_prefix=share_prefix, padding_free=True)
    assert len(calls) == 1 + share_prefix and calls[-1][0] == 1  # packed, after the shared start if asked
    ce_full, value_full, grads_full = loss_and_grads(model, ragged, loss, chunked=False)
    ce_packed, value_packed, grads_packed = loss_and_grads(model, ragged, loss, chunked=True,
                                                           share_prefix=share_prefix, padding_free=True)
    torch.testing.assert_close(ce_packed, ce_full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(value_packed, value_full, rtol=1e-5, atol=1e-6)
    assert grads_packed.keys() == grads_full.keys()
    for name, grad in grads_full.items():
        torch.testing.assert_close(grads_packed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_packed_rows_with_eager_attention_take_an_additive_mask(ragged, tokenizer, always_pack):
    model = build_tiny_llama(len(tokenizer))
    model.set_attn_implementation("eager")
    ce_full = loss_and_grads(model, ragged, LOSSES[0], chunked=False)[0]
    ce_packed = loss_and_grads(model, ragged, LOSSES[0], chunked=True, share_prefix=True, padding_free=True)[0]
    torch.testing.assert_close(ce_packed, ce_full, rtol=1e-5, atol=1e-6)


def test_packed_positions_and_mask_by_hand():
    """Rows of 2 and 3 tokens after a shared start of 2: each token at its own row's position, seeing the start and
    its own row up to itself."""
    rests = torch.tensor([2, 3])
    assert token_logps._packed_positions(rests, 2).tolist() == [2, 3, 2, 3, 4]
    sdpa = build_tiny_llama(8)
    mask = token_logps._packed_attention_mask(rests, 2, sdpa)
    assert mask.shape == (1, 1, 5, 7) and mask.dtype == torch.bool
    assert mask[0, 0].int().tolist() == [[1, 1, 1, 0, 0, 0, 0],
                                         [1, 1, 1, 1, 0, 0, 0],
                                         [1, 1, 0, 0, 1, 0, 0],
                                         [1, 1, 0, 0, 1, 1, 0],
                                         [1, 1, 0, 0, 1, 1, 1]]
    sdpa.set_attn_implementation("eager")
    additive = token_logps._packed_attention_mask(rests, 2, sdpa)
    assert additive.dtype == torch.float32 and torch.equal(additive == 0, mask)


def test_packing_only_where_it_can_hold(ragged, tokenizer, always_pack):
    rows, length = ragged["input_ids"].shape
    tokens = int(ragged["attention_mask"].sum())
    start = shared_start(ragged["input_ids"], ragged["attention_mask"])
    model = build_tiny_llama(len(tokenizer))
    assert decoder_calls(model, ragged, padding_free=True) == [(1, tokens)]
    packed_after_start = [(1, start), (1, tokens - rows * start)]
    assert decoder_calls(model, ragged, share_prefix=True, padding_free=True) == packed_after_start
    assert decoder_calls(model, ragged) == [(rows, length)]
    left = {key: value.flip(1) for key, value in ragged.items()}  # left padding: kept padded
    assert decoder_calls(model, left, padding_free=True) == [(rows, length)]
    model.config.sliding_window = length - 1  # a window the rows outgrow would need its own mask
    assert decoder_calls(model, ragged, padding_free=True) == [(rows, length)]


def test_packing_pays_for_short_ragged_rows_not_for_long_ones_unless_attended_apart():
    """The cost model on SmolLM2-135M's shape, for batches of 8 the benches train on: truthfulqa's (start 24, rows of
    49-63 tokens: packing measured 23 % faster under the dense mask) packs; gsm8k's (rows of 103-155 tokens: 7 %
    slower under the dense mask) packs only with its rows attended apart; rows of one length never."""
    from transformers import LlamaConfig

    smollm = LlamaConfig(hidden_size=576, intermediate_size=1536)
    truthfulqa, gsm8k = torch.tensor([53, 49, 51, 51, 49, 55, 63, 53]), torch.tensor([103, 126, 155, 151, 144, 130,
                                                                                      149, 110])
    for rowwise in (False, True):
        assert token_logps._packing_pays(smollm, truthfulqa, 24, 63, rowwise)
        assert token_logps._packing_pays(smollm, gsm8k, 24, 155, rowwise) == rowwise
        assert not token_logps._packing_pays(smollm, torch.full((8,), 40), 0, 40, rowwise)


def test_packing_keeps_its_mask_under_64_mib():
    """The packed mask grows with the square of a batch's tokens: gsm8k's rows at eval's batch of 64 pack under SDPA
    (7008 packed tokens, a 49 MB boolean mask), at 128 rows (197 MB) they stay padded, and under eager attention
    (additive float masks, 4 bytes an element) the 64 rows stay padded too."""
    from transformers import LlamaConfig

    smollm = LlamaConfig(hidden_size=576, intermediate_size=1536)
    gsm8k = torch.tensor([103, 126, 155, 151, 144, 130, 149, 110])
    smollm._attn_implementation = "sdpa"
    assert token_logps._packing_pays(smollm, gsm8k.repeat(8), 24, 155, rowwise=True)
    assert not token_logps._packing_pays(smollm, gsm8k.repeat(16), 24, 155, rowwise=True)
    smollm._attn_implementation = "eager"
    assert not token_logps._packing_pays(smollm, gsm8k.repeat(8), 24, 155)


def test_packed_rows_are_attended_apart_and_the_config_is_restored(ragged, tokenizer, always_pack):
    """Under SDPA the packed forward's attention runs one row at a time (each layer sees the rows' lengths), and the
    model's config names SDPA again afterwards, even after an error. Under gradient checkpointing (whose recomputation
    runs after the packed forward) the packed rows take the dense mask alone, with the same gradients."""
    model = build_tiny_llama(len(tokenizer))
    seen = []
    rowwise = token_logps._rowwise_sdpa

    def spy(module, query, key, value, attention_mask, **kwargs):
        seen.append((query.shape[2], token_logps._rows_in_flight.get(), attention_mask.dtype))
        return rowwise(module, query, key, value, attention_mask, **kwargs)

    token_logps.AttentionInterface.register(token_logps._ROWWISE, spy)
    try:
        ce, value, grads = loss_and_grads(model, ragged, LOSSES[0], chunked=True, padding_free=True)
        lengths = ragged["attention_mask"].sum(1).tolist()
        # SDPA's boolean mask (a byte an element, as `_packing_pays` counts it), not eager's additive float one
        assert seen == [(sum(lengths), lengths, torch.bool)] * model.config.num_hidden_layers
        assert model.config._attn_implementation == "sdpa" and token_logps._rows_in_flight.get() is None
        model.gradient_checkpointing_enable()
        seen.clear()
        ce_ckpt, value_ckpt, grads_ckpt = loss_and_grads(model, ragged, LOSSES[0], chunked=True, padding_free=True)
        assert not seen and decoder_calls(model, ragged, padding_free=True) == [(1, sum(lengths))]
        model.gradient_checkpointing_disable()
    finally:
        token_logps.AttentionInterface.register(token_logps._ROWWISE, rowwise)
    torch.testing.assert_close(value_ckpt, value, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    with pytest.raises(RuntimeError, match="boom"), token_logps._rows_attended_apart(model.config, torch.tensor([2])):
        assert model.config._attn_implementation == token_logps._ROWWISE
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa" and token_logps._rows_in_flight.get() is None


def test_scoring_runs_the_shared_start_once_and_the_rows_packed_with_the_padded_ce(ragged, tokenizer, always_pack):
    """The inference path (score stage, eval perplexity) is the training path without gradients: the shared start
    once, the rows packed, the padded forward's CE."""
    model = build_tiny_llama(len(tokenizer)).eval()
    start = shared_start(ragged["input_ids"], ragged["attention_mask"])

    def score(model, batch, _, chunk_rows):
        return token_logps.model_response_token_ce(model, batch["input_ids"], batch["attention_mask"],
                                                   batch["labels"], chunk_rows)

    rows = ragged["input_ids"].shape[0]
    shapes = decoder_calls(model, ragged, ce_of=score, chunk_rows=7)
    assert start > 0 and shapes == [(1, start), (1, int(ragged["attention_mask"].sum()) - rows * start)]
    ce = score(model, ragged, model, chunk_rows=7)
    with torch.no_grad():
        expected = response_token_ce(model(input_ids=ragged["input_ids"],
                                           attention_mask=ragged["attention_mask"]).logits, ragged["labels"])
    torch.testing.assert_close(ce, expected, rtol=1e-5, atol=1e-5)


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


def decoder_calls(model, batch, ce_of=training_response_token_ce, **kwargs) -> list[tuple[int, ...]]:
    """The (rows, tokens) of each decoder call that `ce_of(model, batch, model, **kwargs)` makes."""
    shapes = []
    hook = model.get_decoder().register_forward_hook(lambda m, args, out: shapes.append(tuple(out[0].shape[:2])))
    ce_of(model, batch, model, **kwargs)
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
    """LoRA (PEFT's wrapper passes the cache, mask and positions through to the model): the shared start runs once,
    the rows packed or not, and the adapters get the gradients of the per-row pass."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(build_tiny_llama(len(tokenizer)), LoraConfig(task_type="CAUSAL_LM", r=4,
                                                                          target_modules="all-linear",
                                                                          init_lora_weights=False))
    results = []
    for share_prefix, padding_free in ((False, False), (True, False), (True, True)):
        model.zero_grad()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(token_logps, "_packing_pays", lambda *args: True)
            ce, _ = training_response_token_ce(model, batch, model, share_prefix=share_prefix,
                                               padding_free=padding_free)
        ce.mean().backward()
        results.append((ce.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (ce_rows, grads_rows), *others = results
    assert grads_rows and all("lora_" in name for name in grads_rows)
    for ce_other, grads_other in others:  # shared start; shared start and packed
        torch.testing.assert_close(ce_other, ce_rows, rtol=1e-5, atol=1e-6)
        assert grads_other.keys() == grads_rows.keys()
        for name, grad in grads_rows.items():
            torch.testing.assert_close(grads_other[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    start = shared_start(batch["input_ids"], batch["attention_mask"])
    assert decoder_calls(model, batch, share_prefix=True)[0] == (1, start)


def test_the_trainer_packs_by_default_and_takes_the_padded_step(tmp_path, tokenizer, always_pack):
    """`forgetune run`'s trainer: padding_free (on by default) runs the batch packed and applies the gradient of the
    padded batch."""
    from transformers import TrainerCallback

    from forgetune.config import TrainConfig
    from forgetune.trainer import fit

    examples, _ = load_examples(write_jsonl(tmp_path / "r.jsonl", ragged_rows()), tokenizer)
    offsets = example_offsets(examples)
    features = make_features(examples, offsets, np.ones(int(offsets[-1]), np.int8),
                             np.full(int(offsets[-1]), 5.0, np.float32))

    class FirstStep(TrainerCallback):
        def __init__(self):
            self.grads, self.rows_seen = None, []

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if self.grads is None:
                self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

    steps = {}
    assert TrainConfig().padding_free
    for padding_free in (True, False):
        model = build_tiny_llama(len(tokenizer))
        seen = FirstStep()
        hook = model.get_decoder().register_forward_hook(lambda m, args, out, seen=seen: seen.rows_seen.append(
            out[0].shape[0]))
        cfg = TrainConfig(batch_size=8, max_steps=1, max_grad_norm=0.0, logging_steps=1, learning_rate=1e-3,
                          padding_free=padding_free, share_prefix=False)  # one decoder call a step, packed or not
        fit(model, tokenizer, features, objectives.build("sft"), cfg, tmp_path / str(padding_free), key="k",
            callbacks=[seen])
        hook.remove()
        steps[padding_free] = seen
    assert steps[True].rows_seen == [1] and steps[False].rows_seen == [8]
    for name, grad in steps[False].grads.items():
        torch.testing.assert_close(steps[True].grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
