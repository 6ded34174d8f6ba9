"""Batched generation with left padding (so every prompt ends where generation starts), prompts of similar length
batched together; the start a batch's prompts share runs once, several samples of a prompt share one pass over the
prompt; answers that are done leave their batch."""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from forgetune.models import cache_argument
from forgetune.scoring.token_logps import shared_start, sharing_pays

log = logging.getLogger(__name__)


@torch.inference_mode()
def generate_answers(model, tokenizer, prompts: list[list[dict[str, str]]], max_new_tokens: int = 64,
                     batch_size: int = 16, samples: int = 1, temperature: float = 0.0) -> list[str]:
    """Answers to conversations ending in a user turn: greedy when temperature is 0, else `samples` draws each
    (returned prompt by prompt: samples for prompt 0, then prompt 1, ...)."""
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    # Longest first in batches of similar length (little left padding); the answers come back in the prompts' order.
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    device = next(model.parameters()).device
    model.eval()
    sampling = ({"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0} if temperature > 0
                else {"do_sample": False})
    answers: list[list[str]] = [[] for _ in texts]
    bar = tqdm(total=len(texts) * samples, desc="generating", unit="answer", leave=False,
               disable=not log.isEnabledFor(logging.INFO))
    for start in range(0, len(texts), batch_size):
        chosen = order[start : start + batch_size]
        batch = tokenizer([texts[i] for i in chosen], return_tensors="pt", padding=True, padding_side="left",
                          add_special_tokens=False).to(device)
        inputs = _prefilled(model, batch, samples, tokenizer.pad_token_id)
        new_tokens = _in_rounds(model, inputs, max_new_tokens, tokenizer.pad_token_id, tokenizer.eos_token_id,
                                **sampling)
        decoded = [a.strip() for a in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        for k, i in enumerate(chosen):  # each prompt's samples come together
            answers[i] = decoded[k * samples : (k + 1) * samples]
        bar.update(len(new_tokens))
    bar.close()
    return [a for per_prompt in answers for a in per_prompt]


def _prefilled(model, batch, samples: int, pad_token_id: int) -> dict:
    """`generate`'s inputs for `samples` answers to each prompt of the left-padded `batch`, the prompts but their
    last token already in a KV cache; generate continues from it with the last token (the same positions, attention
    and random draws: the same answers up to float rounding).

    generate's own `num_return_sequences` repeats each prompt before its first forward pass, so 4 samples of 50
    prompts run the model over 200 prompts; here each prompt runs once, its cache repeated for the samples. The
    start that every prompt shares (a chat template's system prompt; `shared_start`) runs once for the batch where
    that saves a tenth of its tokens (`sharing_pays`): each row's left padding then moves after it (a hole in the
    mask; positions count the real tokens, as generate numbers them). One greedy answer without a shared start is
    the batch itself; models that take no such cache get `num_return_sequences`."""
    cache_arg = cache_argument(model)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if cache_arg is None or ids.shape[1] < 2:
        return {**batch, "num_return_sequences": samples} if samples > 1 else dict(batch)
    from transformers import DynamicCache

    rows, width = ids.shape
    padding = (mask == 0).sum(1, keepdim=True)
    column = torch.arange(width, device=ids.device)
    real = mask.bool().flip(1)  # the real tokens, left-aligned: each row's tokens then its padding
    start = min(shared_start(ids.gather(1, (column + padding).clamp(max=width - 1)), real),
                width - int(padding.max()) - 1)  # every row keeps a token for generate to continue from
    start = start if sharing_pays(rows, width, start) else 0
    if start == 0 and samples == 1:
        return dict(batch)
    if start:
        gap = (column >= start) & (column < start + padding)
        source = torch.where(column < start, column + padding, column)
        ids = ids.gather(1, source).masked_fill(gap, pad_token_id)
        mask = mask.gather(1, source).masked_fill(gap, 0)
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    cache = DynamicCache(config=model.config)
    if start:
        model(input_ids=ids[:1, :start], attention_mask=mask[:1, :start], position_ids=positions[:1, :start],
              use_cache=True, logits_to_keep=1, **{cache_arg: cache})
        cache.batch_repeat_interleave(rows)
    if start < width - 1:
        model(input_ids=ids[:, start:-1], attention_mask=mask[:, :-1], position_ids=positions[:, start:-1],
              use_cache=True, logits_to_keep=1, **{cache_arg: cache})
    cache.batch_repeat_interleave(samples)
    repeated = {"input_ids": ids, "attention_mask": mask}
    return {**{key: value.repeat_interleave(samples, dim=0) for key, value in repeated.items()}, cache_arg: cache}


def _in_rounds(model, inputs: dict, max_new_tokens: int, pad_token_id: int, eos_token_id: int,
               round_tokens: int = 16, **sampling) -> list[list[int]]:
    """Each row's new tokens (up to its end-of-sequence token, included), generated `round_tokens` at a time: after
    each round the rows that ended leave the batch and its KV cache, and the others continue from the cache (or from
    `inputs`' own, a prompt cache of `_prefilled`). generate's own loop runs every row until the last one ends, so
    a batch of short answers with one that runs to the limit paid for every row to the limit.

    A row's greedy tokens depend on its own row only (up to float rounding), so greedy answers are generate's own.
    A sampled row draws each token from its own distribution as in one generate call, but the rows that left no
    longer take their share of the random stream: the same distribution, other (seeded, reproducible) draws. Models
    that take no such cache, `num_return_sequences` batches and tokenizers without an end token run generate once."""
    cache_arg = cache_argument(model)
    width = inputs["input_ids"].shape[1]
    if cache_arg is None or eos_token_id is None or "num_return_sequences" in inputs:
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=pad_token_id,
                             eos_token_id=eos_token_id, **sampling)
        return out[:, width:].tolist()
    from transformers import DynamicCache

    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    cache = inputs.get(cache_arg)
    cache = DynamicCache(config=model.config) if cache is None else cache
    live, answers = list(range(len(ids))), [[] for _ in range(len(ids))]
    while len(live):
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=min(round_tokens, max_new_tokens),
                             pad_token_id=pad_token_id, eos_token_id=eos_token_id, **sampling, **{cache_arg: cache})
        new = out[:, ids.shape[1]:]
        max_new_tokens -= new.shape[1]
        done = (new == eos_token_id).any(1) | (max_new_tokens <= 0)
        for row in done.nonzero().flatten().tolist():
            tokens = out[row, width:].tolist()
            answers[live[row]] = tokens[: tokens.index(eos_token_id) + 1] if eos_token_id in tokens else tokens
        keep = (~done).nonzero().flatten()
        ids, mask, live = out[keep], torch.cat([mask, torch.ones_like(new)], 1)[keep], [live[i] for i in keep.tolist()]
        cache.batch_select_indices(keep)
    return answers
