"""Batched generation with left padding (so every prompt ends where generation starts)."""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


@torch.inference_mode()
def generate_answers(model, tokenizer, prompts: list[list[dict[str, str]]], max_new_tokens: int = 64,
                     batch_size: int = 16, samples: int = 1, temperature: float = 0.0) -> list[str]:
    """Answers to conversations ending in a user turn: greedy when temperature is 0, else `samples` draws each
    (returned prompt by prompt: samples for prompt 0, then prompt 1, ...)."""
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    device = next(model.parameters()).device
    model.eval()
    sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0,
                "num_return_sequences": samples} if temperature > 0 else {"do_sample": False}
    answers: list[str] = []
    bar = tqdm(total=len(texts) * samples, desc="generating", unit="answer", leave=False,
               disable=not log.isEnabledFor(logging.INFO))
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True,
                          padding_side="left", add_special_tokens=False).to(device)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, **sampling)
        new_tokens = out[:, batch["input_ids"].shape[1]:]
        answers += [a.strip() for a in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        bar.update(len(new_tokens))
    bar.close()
    return answers

