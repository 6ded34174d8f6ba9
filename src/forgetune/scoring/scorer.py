"""Per-token CE of a frozen model on every response token, batched by length, written as flat float32 arrays."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from forgetune.data.collator import Collator
from forgetune.data.corpus import Example, example_lengths, example_offsets
from forgetune.io import NpyFile
from forgetune.processes import process_state
from forgetune.scoring.token_logps import model_response_token_ce

log = logging.getLogger(__name__)
_REDUCE_CHUNK = 1 << 24  # floats per all-reduce: 64 MB at a time, whatever the corpus size


@torch.inference_mode()
def token_ce(
    model: torch.nn.Module,
    examples: Sequence[Example],
    pad_token_id: int,
    batch_size: int = 16,
    indices: Sequence[int] | None = None,
    out: np.ndarray | NpyFile | None = None,
    desc: str = "scoring",
) -> np.ndarray | NpyFile:
    """CE of each response token of examples[indices] written into `out` (flat, corpus order, float32; an array, or
    an `NpyFile` that keeps the scores out of memory).

    Examples are visited longest first in batches of similar length, so little compute goes to padding. Under
    `accelerate launch` each process scores every num_processes-th example of that order (balanced lengths) and
    the processes' arrays are summed in place: each token is written by exactly one process, the rest hold zeros.
    """
    offsets = example_offsets(examples)
    if out is None:
        out = np.zeros(int(offsets[-1]), dtype=np.float32)
    indices = np.arange(len(examples)) if indices is None else np.asarray(indices, dtype=np.int64)
    order = indices[np.argsort(-example_lengths(examples)[indices], kind="stable")]
    state = process_state()
    order = order[state.process_index :: state.num_processes]
    collate = Collator(pad_token_id)
    device = next(model.parameters()).device
    model.eval()
    total = int(np.diff(offsets)[indices].sum())
    with tqdm(total=total, desc=desc, unit="tok", leave=False, disable=not log.isEnabledFor(logging.INFO)) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = collate.examples(examples[int(i)] for i in chunk)  # a packed corpus builds these lists now
            ce = model_response_token_ce(model, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                         batch["labels"].to(device)).cpu().numpy()
            pos = 0
            for i in chunk:
                n = int(offsets[i + 1] - offsets[i])
                out[offsets[i] : offsets[i + 1]] = ce[pos : pos + n]
                pos += n
            bar.update(pos)
    if state.num_processes > 1:
        _sum_across_processes(out, indices if len(indices) < len(examples) else None, offsets)
    return out


def _sum_across_processes(out: np.ndarray | NpyFile, indices: np.ndarray | None, offsets: np.ndarray) -> None:
    """All-reduce the tokens this call scored (all of `out`, or the slices of `indices`), in bounded chunks."""
    import torch.distributed as dist

    if indices is None:  # the whole array, a chunk at a time
        for start in range(0, len(out), _REDUCE_CHUNK):
            chunk = out[start : start + _REDUCE_CHUNK]  # an array's view (reduced in place), or read from the file
            dist.all_reduce(torch.from_numpy(chunk))
            out[start : start + _REDUCE_CHUNK] = chunk
        return
    slices = [(int(offsets[i]), int(offsets[i + 1])) for i in np.sort(indices)]
    flat = np.concatenate([out[a:b] for a, b in slices]) if slices else np.zeros(0, np.float32)
    _sum_across_processes(flat, None, offsets)
    pos = 0
    for a, b in slices:
        out[a:b] = flat[pos : pos + b - a]
        pos += b - a
