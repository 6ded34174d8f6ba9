"""lm-evaluation-harness's `hf` model with each context run once for all its continuations.

A multiple-choice question asks the harness for the log-likelihood of every choice after the same context, and its
`HFLM` runs the context again with each choice (a TODO in its `_loglikelihood_tokens` asks for a middleware that
lumps requests with the same context together). `SharedContextLM` is that middleware: a batch's distinct contexts
run once, left-padded, into a KV cache; each continuation then runs from its own context's cache, and only the
hidden states that predict continuation tokens go through the output head. Same answers as `HFLM` up to float
rounding; everything else (tokenisation, generation, rolling log-likelihoods, caching) is `HFLM`'s own.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from tqdm.auto import tqdm
from transformers import DynamicCache

from forgetune.data.collator import Collator
from forgetune.models import cache_argument
from forgetune.scoring.token_logps import caught_hidden_states, decoder_and_head, prompt_learning

Request = tuple[tuple[str, str] | None, list[int], list[int]]  # (cache key, context tokens, continuation tokens)


class SharedContextLM(HFLM):
    """`HFLM` whose log-likelihood requests run grouped by context. Requests it would truncate (longer than the
    model's `max_length`), `batch_size="auto"` and models that cannot continue from a given KV cache or whose
    logits are transformed after the head take `HFLM`'s own path."""

    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False,
                              override_bs: int | None = None) -> list[tuple[float, bool]]:
        inner = getattr(self.model, "get_base_model", lambda: self.model)()  # under a PEFT wrapper
        if (self.backend != "causal" or not isinstance(self.batch_size, int) or decoder_and_head(self.model) is None
                or cache_argument(inner) is None
                or prompt_learning(self.model)):
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        answers: list[tuple[float, bool] | None] = [None] * len(requests)
        too_long = [i for i, (_, ctx, cont) in enumerate(requests) if len(ctx) + len(cont) > self.max_length]
        if too_long:
            own = super()._loglikelihood_tokens([requests[i] for i in too_long], disable_tqdm, override_bs)
            for i, answer in zip(too_long, own, strict=True):
                answers[i] = answer
        fitting = [i for i, answer in enumerate(answers) if answer is None]
        bar = tqdm(total=len(fitting), desc="Running loglikelihood requests",
                   disable=disable_tqdm or self.rank != 0)
        for batch in context_batches([requests[i] for i in fitting], self.batch_size):
            for k, answer in zip(batch, self._batch_answers([requests[fitting[k]] for k in batch]), strict=True):
                i = fitting[k]
                answers[i] = answer
                if requests[i][0] is not None:  # rolling log-likelihood windows carry no cache key
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
            bar.update(len(batch))
        bar.close()
        return answers

    @torch.inference_mode()
    def _batch_answers(self, batch: list[Request], chunk_rows: int = 4096) -> list[tuple[float, bool]]:
        """(summed log-probability of the continuation, whether greedy decoding gives it) for each request.

        The batch's distinct contexts run left-padded (each ends where its continuations begin) into a KV cache; the
        hidden state at a context's last token predicts its continuations' first token. The continuations but their
        last token then run in batches of similar length (`similar_lengths`), each from its own context's rows of
        the cache, at their own positions: their hidden states predict the rest."""
        model = self.model
        decoder, head = decoder_and_head(model)
        cache_arg = cache_argument(getattr(model, "get_base_model", lambda: model)())
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id
        contexts: dict[tuple[int, ...], int] = {}
        which = [contexts.setdefault(tuple(ctx), len(contexts)) for _, ctx, _ in batch]
        left = Collator(pad, padding_side="left")([{"input_ids": list(ctx)} for ctx in contexts])
        ids, mask = left["input_ids"].to(self.device), left["attention_mask"].to(self.device)
        rests = [cont[:-1] for _, _, cont in batch]
        hidden: list[torch.Tensor | None] = [None] * len(batch)  # each request's rows before the head
        cache = DynamicCache(config=model.config)
        model.eval()
        with caught_hidden_states(decoder) as caught:
            model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                  use_cache=True, logits_to_keep=1, **{cache_arg: cache})
            firsts = caught.pop()[:, -1]
            ragged = [r for r in range(len(batch)) if rests[r]]
            for run in similar_lengths([len(rests[r]) for r in ragged], self.batch_size):
                chunk = [ragged[k] for k in run]
                right = Collator(pad)([{"input_ids": rests[r]} for r in chunk])
                rest_ids, rest_mask = right["input_ids"].to(self.device), right["attention_mask"].to(self.device)
                index = torch.tensor([which[r] for r in chunk], device=self.device)
                rows_cache = copy.deepcopy(cache)
                rows_cache.batch_select_indices(index)  # row k continues from its own context's cache
                positions = mask.sum(1)[index, None] + torch.arange(rest_ids.shape[1], device=self.device)
                model(input_ids=rest_ids, attention_mask=torch.cat([mask[index], rest_mask], 1),
                      position_ids=positions, use_cache=True, logits_to_keep=1, **{cache_arg: rows_cache})
                out = caught.pop()
                for k, r in enumerate(chunk):
                    hidden[r] = out[k, : len(rests[r])]
        rows = torch.cat([firsts[c, None] if hidden[r] is None else torch.cat([firsts[c, None], hidden[r]])
                          for r, c in enumerate(which)])
        targets = torch.tensor([t for _, _, cont in batch for t in cont], device=rows.device)
        logprobs, greedy = [], []
        for i in range(0, rows.shape[0], chunk_rows):
            logits = head(rows[i : i + chunk_rows]).float()
            logprobs.append(-F.cross_entropy(logits, targets[i : i + chunk_rows], reduction="none"))
            greedy.append(logits.argmax(-1) == targets[i : i + chunk_rows])
        flat_logprobs, flat_greedy = torch.cat(logprobs).cpu(), torch.cat(greedy).cpu()
        answers, pos = [], 0
        for _, _, cont in batch:  # rows in batch order, each request's continuation tokens in order
            answers.append((float(flat_logprobs[pos : pos + len(cont)].sum()),
                            bool(flat_greedy[pos : pos + len(cont)].all())))
            pos += len(cont)
        return answers


def context_batches(requests: list[Request], batch_size: int) -> list[list[int]]:
    """Indices of `requests` in batches holding every request of some distinct contexts (`similar_lengths` of them:
    they run together, left-padded to the longest)."""
    by_context: dict[tuple[int, ...], list[int]] = {}
    for i, (_, ctx, _) in enumerate(requests):
        by_context.setdefault(tuple(ctx), []).append(i)
    contexts = list(by_context)
    return [[i for c in run for i in by_context[contexts[c]]]
            for run in similar_lengths([len(ctx) for ctx in contexts], batch_size)]


def similar_lengths(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices of `lengths`, longest first, in runs of up to `batch_size` that end before the next length would make
    padding to the run's longest a fifth of its tokens (a few long outliers get short runs of their own)."""
    runs: list[list[int]] = []
    tokens = width = 0  # the last run's tokens, its longest
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if not runs or len(runs[-1]) == batch_size or (len(runs[-1]) + 1) * width > 1.25 * (tokens + lengths[i]):
            runs.append([])
            tokens, width = 0, lengths[i]
        runs[-1].append(i)
        tokens += lengths[i]
    return runs
