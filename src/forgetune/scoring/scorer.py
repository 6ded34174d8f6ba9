"""Per-token CE of a frozen model on every response token, batched by length, written as flat float32 arrays."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from forgetune.data.collator import Collator
from forgetune.data.formats import Example
from forgetune.scoring.token_logps import response_token_ce

log = logging.getLogger(__name__)


def example_offsets(examples: Sequence[Example]) -> np.ndarray:
    """offsets[i]:offsets[i+1] is example i's slice of the flat per-token arrays (corpus order)."""
    return np.concatenate([[0], np.cumsum([ex.num_response_tokens for ex in examples])]).astype(np.int64)


@torch.inference_mode()
def token_ce(
    model: torch.nn.Module,
    examples: Sequence[Example],
    pad_token_id: int,
    batch_size: int = 16,
    indices: Sequence[int] | None = None,
    out: np.ndarray | None = None,
    desc: str = "scoring",
) -> np.ndarray:
    """CE of each response token of examples[indices] written into `out` (flat, corpus order, float32).

    Examples are visited longest first in batches of similar length, so little compute goes to padding.
    """
    offsets = example_offsets(examples)
    if out is None:
        out = np.zeros(int(offsets[-1]), dtype=np.float32)
    indices = np.arange(len(examples)) if indices is None else np.asarray(indices)
    order = indices[np.argsort([-len(examples[i].input_ids) for i in indices], kind="stable")]
    collate = Collator(pad_token_id)
    device = next(model.parameters()).device
    model.eval()
    total = int(sum(examples[i].num_response_tokens for i in indices))
    with tqdm(total=total, desc=desc, unit="tok", leave=False, disable=not log.isEnabledFor(logging.INFO)) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = collate([{"input_ids": examples[i].input_ids, "labels": examples[i].labels} for i in chunk])
            logits = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits
            ce = response_token_ce(logits, batch["labels"].to(device)).cpu().numpy()
            pos = 0
            for i in chunk:
                n = examples[i].num_response_tokens
                out[offsets[i] : offsets[i + 1]] = ce[pos : pos + n]
                pos += n
            bar.update(pos)
    return out
