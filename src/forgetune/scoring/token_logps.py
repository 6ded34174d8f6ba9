"""Per-token cross-entropy of response tokens. The token at position t is predicted by the logits at t - 1."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from forgetune.data.corpus import IGNORE_INDEX
from forgetune.models import cache_argument


def target_mask(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: positions t >= 1 holding a response token. Position 0 is never scored (nothing predicts it)."""
    mask = labels != IGNORE_INDEX
    mask[:, 0] = False
    return mask


def response_token_ce(logits: torch.Tensor, labels: torch.Tensor, chunk_rows: int = 4096) -> torch.Tensor:
    """CE of every response token, flat in (batch, position) order: shape (N,) float32.

    logits: (B, T, V), labels: (B, T). Only the N response rows of logits[:, :-1] are cast to fp32, `chunk_rows` at a
    time when no gradient is needed, so a large vocabulary never materialises a full fp32 (B, T, V) tensor.
    """
    mask = target_mask(labels)
    rows = logits[:, :-1][mask[:, 1:]]  # (N, V): logits at t - 1 for each target t
    targets = labels[mask]  # (N,)
    if torch.is_grad_enabled() and rows.requires_grad:
        return F.cross_entropy(rows.float(), targets, reduction="none")
    return _chunked_ce(rows, targets, chunk_rows)


def _chunked_ce(rows: torch.Tensor, targets: torch.Tensor, chunk_rows: int, head=None) -> torch.Tensor:
    """CE of (N, ·) rows `chunk_rows` at a time, each chunk through `head` first (hidden states -> logits) if given,
    so at most one chunk of fp32 logits exists at once."""
    if not rows.shape[0]:
        return rows.new_zeros(0, dtype=torch.float32)
    return torch.cat([F.cross_entropy((rows[i : i + chunk_rows] if head is None else head(rows[i : i + chunk_rows]))
                                      .float(), targets[i : i + chunk_rows], reduction="none")
                      for i in range(0, rows.shape[0], chunk_rows)])


# Configs whose logits are not just lm_head(hidden): their scoring takes the model's own full forward.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale", "logits_scaling")


@torch.inference_mode()
def model_response_token_ce(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                            labels: torch.Tensor, chunk_rows: int = 4096) -> torch.Tensor:
    """`response_token_ce` of a frozen causal LM without its full (B, T, V) logits: the training path
    (`training_response_token_ce`) without gradients, so scoring and evaluation pay what a training forward does.

    Only the N response rows' hidden states go through the output head, `chunk_rows` at a time (prompt and padding
    positions cost no head compute; a 128k vocabulary never holds more than one chunk of logits); a shared start
    runs once per batch and the rows run packed where that costs less. Models whose logits are transformed after
    the head (soft-capping, scaling) or that expose no decoder/head take the plain forward.
    """
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    return training_response_token_ce(model, inputs, model, chunk_rows, share_prefix=True, padding_free=True)[0]


def decoder_and_head(base: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(decoder, output head) of a model whose logits are the head applied to the decoder's last hidden state and
    that takes `logits_to_keep` (so its forward can skip the full logits); None for models whose logits are
    transformed after the head (soft-capping, scaling) or that expose no decoder, head or `logits_to_keep`."""
    get_decoder = getattr(base, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    forward = getattr(getattr(base, "get_base_model", lambda: base)(), "forward", None)  # under a PEFT wrapper
    if (decoder is None or head is None or any(getattr(base.config, a, None) for a in _LOGIT_TRANSFORMS)
            or forward is None or "logits_to_keep" not in inspect.signature(forward).parameters):
        return None
    return decoder, head


@contextlib.contextmanager
def caught_hidden_states(decoder: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """The decoder's last hidden state of each forward pass run inside the block, in order."""
    caught: list[torch.Tensor] = []
    hook = decoder.register_forward_hook(lambda module, args, out: caught.append(
        out[0] if isinstance(out, tuple) else out.last_hidden_state))
    try:
        yield caught
    finally:
        hook.remove()


def _head_ce(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="none")


def shared_start(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """How many first tokens every row of a batch has in common, no padding among them: a system prompt, a shared
    instruction or template."""
    same = ((input_ids == input_ids[:1]) & attention_mask.bool()).all(0)
    return int(same.long().cumprod(0).sum())


def sharing_pays(rows: int, length: int, start: int) -> bool:
    """Whether running a shared start of `start` tokens once saves at least a tenth of a (rows, length) batch."""
    return rows >= 2 and 0 < start < length and 10 * (rows - 1) * start >= rows * length


def prompt_learning(base: torch.nn.Module) -> bool:
    """A PEFT prompt-learning model: its virtual tokens fill the cache and are in no mask the batch carries."""
    return getattr(getattr(base, "active_peft_config", None), "is_prompt_learning", False)


def _prefix_cache_argument(base: torch.nn.Module, inner: torch.nn.Module, input_ids: torch.Tensor,
                           start: int) -> str | None:
    """The cache keyword under which `base` (`inner`: the model inside a PEFT wrapper, else `base`) can run a batch's
    shared start once for all its rows, or None where that does not pay (under a tenth of the batch's tokens saved)
    or cannot be done: gradient checkpointing (its recomputation would write the cache again), PEFT prompt learning
    (it fills the cache itself), models that take no KV cache."""
    if not sharing_pays(*input_ids.shape, start) or _checkpointing(inner) or prompt_learning(base):
        return None
    return cache_argument(inner)


def _checkpointing(inner: torch.nn.Module) -> bool:
    """Whether the model recomputes its layers in the backward (gradient checkpointing)."""
    checkpointing = ("is_activation_checkpointing" if hasattr(type(inner), "is_activation_checkpointing")
                     else "is_gradient_checkpointing")  # transformers 5 renamed it
    return bool(getattr(inner, checkpointing, False))


def _packable_lengths(base: torch.nn.Module, inner: torch.nn.Module, attention_mask: torch.Tensor
                      ) -> torch.Tensor | None:
    """Each row's length where its rows can run packed: right padding (each row its tokens, then padding), an
    attention that takes a custom 4D mask (SDPA, eager) and no window shorter than the rows (sliding or chunked
    attention would need its own mask), no PEFT prompt learning (its virtual tokens are not in the mask), a model
    that takes position ids. Else None."""
    rows, width = attention_mask.shape
    window = getattr(base.config, "sliding_window", None) or getattr(base.config, "attention_chunk_size", None)
    forward = getattr(inner, "forward", None)
    if (rows < 2 or getattr(base.config, "_attn_implementation", None) not in ("sdpa", "eager")
            or (window and width > window) or forward is None
            or "position_ids" not in inspect.signature(forward).parameters or prompt_learning(base)):
        return None
    lengths = attention_mask.sum(1)
    right_padded = torch.arange(width, device=attention_mask.device) < lengths[:, None]
    return lengths if torch.equal(attention_mask.bool(), right_padded) else None


# The largest packed attention mask (P x (start + P)) a packed forward may build: its size grows with the square of
# the batch's tokens, a padded batch's (B x T x T) with one row's, so a large scoring batch of long rows stays padded.
_PACKED_MASK_BYTES = 1 << 26


def _packing_pays(config, lengths: torch.Tensor, start: int, width: int, rowwise: bool = False) -> bool:
    """Whether the rows' rests (after a shared start of `start` tokens) cost at least a tenth less packed in one row
    than padded to `width`, with a packed mask of at most `_PACKED_MASK_BYTES` (a byte an element under SDPA, up to 4
    under eager attention's additive mask). Packing drops the padding; under a dense mask each packed token attends
    over the whole packed row (no CPU kernel skips the other rows' blocks), so long packed rows lose, unless the rows
    are attended apart (`rowwise`, `_rows_attended_apart`): then a token attends over the shared start and its own
    row only. Cost per token: the layers' matmuls (~8 d^2 + 6 d d_ff) plus ~6 d per key, the attention's share as
    measured on 2 CPU cores with PyTorch's SDPA (SmolLM2-135M, docs/performance.md)."""
    d = getattr(config, "hidden_size", None)
    rests = lengths - start
    packed_tokens = int(rests.sum())
    itemsize = 1 if getattr(config, "_attn_implementation", None) == "sdpa" else 4
    if not d or packed_tokens * (start + packed_tokens) * itemsize > _PACKED_MASK_BYTES:
        return False  # no usual fields (a multimodal wrapper), or a mask too large: keep the padded batch
    per_token = 8 * d * d + 6 * d * (getattr(config, "intermediate_size", None) or 4 * d)
    keys = start + (rests if rowwise else packed_tokens)
    packed = int((rests * (per_token + 6 * d * keys)).sum())
    padded = len(lengths) * (width - start) * (per_token + 6 * d * width)
    return packed <= 0.9 * padded


# Packed rows attended apart: transformers looks a model's attention function up by the name in its config at every
# layer's forward, so for the packed forward the config names this one, which runs PyTorch's SDPA on each row's own
# block (the shared start and the row itself) instead of on the whole packed row under the dense mask.
_ROWWISE = "forgetune_packed_rows"
_rows_in_flight: ContextVar[list[int] | None] = ContextVar(_ROWWISE, default=None)


def _rowwise_sdpa(module, query, key, value, attention_mask, **kwargs):
    """SDPA of a packed row (query (1, H, P, D), keys (1, H, start + P, D)) one row at a time: the packed rows'
    lengths come from `_rows_attended_apart`. Each row's queries see the shared start and the row's own keys, under
    the dense mask's slice for those (or causal, with no shared start): the dense mask's result, without the other
    rows' keys. Outside a packed forward (none in flight) it is plain SDPA."""
    rests = _rows_in_flight.get()
    if rests is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    start, offset, outputs = key.shape[2] - query.shape[2], 0, []
    for n in rests:
        queries, own = slice(offset, offset + n), slice(start + offset, start + offset + n)
        if start:
            keys, values = (torch.cat([x[:, :, :start], x[:, :, own]], 2) for x in (key, value))
            mask = torch.cat([attention_mask[:, :, queries, :start], attention_mask[:, :, queries, own]], 3)
        else:
            keys, values, mask = key[:, :, own], value[:, :, own], None  # None: causal over the row
        outputs.append(sdpa_attention_forward(module, query[:, :, queries], keys, values, mask, **kwargs)[0])
        offset += n
    return torch.cat(outputs, 1), None


def _rowwise_possible(base: torch.nn.Module, inner: torch.nn.Module) -> bool:
    """Whether packed rows can be attended apart: SDPA, a model that looks its attention function up in
    transformers' AttentionInterface, one config (no sub-configs whose attention could differ), no gradient
    checkpointing (its recomputation, after the packed forward, would run other kernels than the forward did)."""
    return (getattr(base.config, "_attn_implementation", None) == "sdpa"
            and getattr(type(inner), "_supports_attention_backend", False)
            and not getattr(base.config, "sub_configs", None) and not _checkpointing(inner))


@contextlib.contextmanager
def _rows_attended_apart(config, rests: torch.Tensor):
    """During the packed forward, the model's attention is `_rowwise_sdpa` over rows of `rests` tokens (the dense
    mask is passed too: each row's block is cut from it)."""
    if _ROWWISE not in AttentionInterface._global_mapping:
        AttentionInterface.register(_ROWWISE, _rowwise_sdpa)
    original = config._attn_implementation
    token = _rows_in_flight.set(rests.tolist())
    config._attn_implementation = _ROWWISE
    try:
        yield
    finally:
        config._attn_implementation = original
        _rows_in_flight.reset(token)


def _packed_offsets(rests: torch.Tensor) -> torch.Tensor:
    """Where each row's rest begins in the packed row."""
    return torch.cumsum(rests, 0) - rests


def _packed_positions(rests: torch.Tensor, start: int) -> torch.Tensor:
    """Each packed token's position in its own row: start, start + 1, ... for every row's rest."""
    index = torch.arange(int(rests.sum()), device=rests.device)
    return start + index - torch.repeat_interleave(_packed_offsets(rests), rests)


def _packed_attention_mask(rests: torch.Tensor, start: int, base: torch.nn.Module) -> torch.Tensor:
    """(1, 1, P, start + P): a packed token sees the shared start and its own row's tokens up to itself, nothing of
    the other rows. Boolean (True: attend) for SDPA; additive (0 or the dtype's minimum) for eager attention."""
    row = torch.repeat_interleave(torch.arange(len(rests), device=rests.device), rests)
    index = torch.arange(row.numel(), device=rests.device)
    seen = (row[:, None] == row[None, :]) & (index[None, :] <= index[:, None])
    seen = torch.cat([seen.new_ones(row.numel(), start), seen], 1)[None, None]
    if base.config._attn_implementation == "sdpa":
        return seen
    dtype = next(base.parameters()).dtype
    return torch.zeros(seen.shape, dtype=dtype, device=seen.device).masked_fill(~seen, torch.finfo(dtype).min)


def training_response_token_ce(model: torch.nn.Module, inputs: dict[str, torch.Tensor], base: torch.nn.Module,
                               chunk_rows: int = 256, share_prefix: bool = False,
                               padding_free: bool = False) -> tuple[torch.Tensor, object]:
    """`response_token_ce` with gradients, without the (B, T, V) logits: (ce, the model's outputs).

    `model` is what the Trainer calls (maybe wrapped for data parallel), `base` the model inside it. The decoder's
    last hidden state is caught by a hook while the model runs with `logits_to_keep=1` (its head sees one position);
    the N response rows then go through the head `chunk_rows` at a time, each chunk checkpointed: its logits are
    freed after the forward and recomputed in the backward, so memory holds one chunk of logits, not B x T x V.
    Models whose logits are transformed after the head, or without a decoder, head or `logits_to_keep`, take the
    plain forward.

    `share_prefix`: the tokens every row starts with (`shared_start`: a chat template's system prompt) run once, into
    a KV cache repeated for the rows, and the rest of each row continues from it: the same positions, attention and
    loss, the shared start's compute paid once per batch instead of once per row (gradients equal up to float
    rounding: the rows' contributions to it are summed in another order).

    `padding_free`: the rows (their rests after a shared start) run packed end to end in one row, each token seeing
    the shared start and its own row's earlier tokens (`_packed_attention_mask`) at its own position, so no padding
    token runs; with SDPA each row is attended apart (`_rows_attended_apart`: a token's attention costs what it does
    padded), else the packed row's attention grows with its length; packed only where that costs less
    (`_packing_pays`)."""
    ids, attention, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
    parts = decoder_and_head(base)
    if parts is None:
        outputs = model(input_ids=ids, attention_mask=attention)
        return response_token_ce(outputs.logits, labels), outputs
    decoder, head = parts
    inner = getattr(base, "get_base_model", lambda: base)()  # under a PEFT wrapper
    start = shared_start(ids, attention) if share_prefix else 0
    cache_arg = _prefix_cache_argument(base, inner, ids, start) if start else None
    start = start if cache_arg is not None else 0
    lengths = _packable_lengths(base, inner, attention) if padding_free else None
    rowwise = lengths is not None and _rowwise_possible(base, inner)
    packed = lengths is not None and _packing_pays(base.config, lengths, start, ids.shape[1], rowwise)
    rests = lengths - start if packed else None
    cache = DynamicCache(config=base.config) if cache_arg is not None else None
    with caught_hidden_states(decoder) as caught:
        if cache is not None:
            model(input_ids=ids[:1, :start], attention_mask=attention[:1, :start], use_cache=True, logits_to_keep=1,
                  **{cache_arg: cache})
        if packed:
            packed_mask = _packed_attention_mask(rests, start, base)  # before the config names the rows-apart SDPA
            with _rows_attended_apart(base.config, rests) if rowwise else contextlib.nullcontext():
                outputs = model(input_ids=ids[:, start:][attention[:, start:].bool()][None], attention_mask=packed_mask,
                                position_ids=_packed_positions(rests, start)[None], logits_to_keep=1,
                                **({cache_arg: cache, "use_cache": True} if cache is not None else {}))
        elif cache is not None:
            cache.batch_repeat_interleave(ids.shape[0])
            outputs = model(input_ids=ids[:, start:], attention_mask=attention, use_cache=True, logits_to_keep=1,
                            **{cache_arg: cache})
        else:
            outputs = model(input_ids=ids, attention_mask=attention, logits_to_keep=1)
    mask = target_mask(labels)
    targets = labels[mask]
    if packed:  # each row's token t sits at t (in the shared start) or after the earlier rows' rests
        flat = torch.cat([caught[0][0], caught[1][0]]) if start else caught[0][0]
        column = torch.arange(ids.shape[1], device=ids.device)
        in_flat = torch.where(column < start, column, _packed_offsets(rests)[:, None] + column)
        rows = flat[in_flat[:, :-1][mask[:, 1:]]]
    else:
        hidden = caught[-1] if cache is None else torch.cat([caught[0].expand(ids.shape[0], -1, -1), caught[1]], 1)
        rows = hidden[:, :-1][mask[:, 1:]]
    if not torch.is_grad_enabled():
        return _chunked_ce(rows, targets, chunk_rows, head), outputs
    if not rows.shape[0]:
        return _head_ce(head, rows, targets), outputs  # empty, still attached to the graph
    return torch.cat([checkpoint(_head_ce, head, rows[i : i + chunk_rows], targets[i : i + chunk_rows],
                                 use_reentrant=False) for i in range(0, rows.shape[0], chunk_rows)]), outputs
