"""SharedContextLM: the harness's log-likelihood requests with each context run once give HFLM's own answers."""

from __future__ import annotations

import random

import pytest
import torch
from lm_eval.models.huggingface import HFLM

from forgetune.integrations.lm_eval import SharedContextLM, context_batches, similar_lengths


def make_lm(cls, model_dir, **kwargs):
    return cls(pretrained=str(model_dir), dtype="float32", device="cpu", **kwargs)


def greedy_tokens(model, context: list[int], n: int) -> list[int]:
    ids = list(context)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(context):]


@pytest.fixture(scope="module")
def requests(tiny_model_dir):
    """Requests (key, context, continuation) of every kind the grouping meets: contexts of several lengths asked
    several times and once, one-token continuations, a continuation that is another's first token, the same
    continuation after two contexts, a greedy continuation (its flag must come out True), a rolling window (no key)."""
    rng = random.Random(0)
    lm = make_lm(HFLM, tiny_model_dir, batch_size=4)
    vocab = lm.model.config.vocab_size
    contexts = [[rng.randrange(3, vocab) for _ in range(n)] for n in (1, 2, 5, 9, 9, 17, 30)]
    out = []
    for c, ctx in enumerate(contexts):
        for k in range(1 + c % 4):
            out.append(((f"ctx{c}", f"cont{k}"), ctx, [rng.randrange(3, vocab) for _ in range(1 + (c * k) % 6)]))
    long_cont = [rng.randrange(3, vocab) for _ in range(4)]
    out += [(("a", "prefix"), contexts[2], long_cont[:1]), (("a", "whole"), contexts[2], long_cont),
            (("b", "whole"), contexts[4], long_cont),
            (("greedy", "g"), contexts[5], greedy_tokens(lm.model, contexts[5], 5)),
            (None, contexts[3], [rng.randrange(3, vocab) for _ in range(7)])]
    return out


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_answers_equal_hflms(tiny_model_dir, requests, batch_size, monkeypatch):
    expected = make_lm(HFLM, tiny_model_dir, batch_size=batch_size)._loglikelihood_tokens(requests)
    lm = make_lm(SharedContextLM, tiny_model_dir, batch_size=batch_size)
    cached = []
    monkeypatch.setattr(lm.cache_hook, "add_partial", lambda kind, key, answer: cached.append((key, answer)))
    got = lm._loglikelihood_tokens(requests)
    assert [g[1] for g in got] == [e[1] for e in expected]
    assert any(g[1] for g in got) and not all(g[1] for g in got)
    assert [g[0] for g in got] == pytest.approx([e[0] for e in expected], abs=1e-4)
    assert dict(cached) == {r[0]: answer for r, answer in zip(requests, got, strict=True) if r[0] is not None}
    assert len(cached) == len(requests) - 1  # each keyed answer once


def test_each_context_runs_once(tiny_model_dir, requests):
    """The model sees each distinct context's tokens once, plus the continuations but their last token."""
    lm = make_lm(SharedContextLM, tiny_model_dir, batch_size=64)
    seen = []  # the real (unpadded) tokens of each forward pass
    lm.model.register_forward_pre_hook(lambda module, args, kw: seen.append(int(
        kw["attention_mask"][:, -kw["input_ids"].shape[1]:].sum())), with_kwargs=True)
    lm._loglikelihood_tokens(requests)
    contexts = {tuple(ctx) for _, ctx, _ in requests}
    assert sum(seen) == sum(map(len, contexts)) + sum(len(cont) - 1 for _, _, cont in requests)


def test_requests_longer_than_the_model_take_hflms_truncation(tiny_model_dir, requests, monkeypatch):
    expected = make_lm(HFLM, tiny_model_dir, batch_size=4, max_length=12)._loglikelihood_tokens(requests)
    lm = make_lm(SharedContextLM, tiny_model_dir, batch_size=4, max_length=12)
    sent = []
    batch_answers = lm._batch_answers
    monkeypatch.setattr(lm, "_batch_answers", lambda batch: sent.extend(batch) or batch_answers(batch))
    got = lm._loglikelihood_tokens(requests)
    assert sorted(map(str, sent)) == sorted(str(r) for r in requests if len(r[1]) + len(r[2]) <= 12)
    assert [g[0] for g in got] == pytest.approx([e[0] for e in expected], abs=1e-4)
    assert [g[1] for g in got] == [e[1] for e in expected]


def test_models_with_transformed_logits_take_hflms_path(tiny_model_dir, requests, monkeypatch):
    lm = make_lm(SharedContextLM, tiny_model_dir, batch_size=4)
    lm.model.config.final_logit_softcapping = 30.0  # not applied by Llama: the answers stay HFLM's
    monkeypatch.setattr(lm, "_batch_answers", lambda batch: pytest.fail("ran the shared-context path"))
    expected = make_lm(HFLM, tiny_model_dir, batch_size=4)._loglikelihood_tokens(requests)
    assert [g[0] for g in lm._loglikelihood_tokens(requests)] == pytest.approx([e[0] for e in expected], abs=1e-4)


def test_context_batches_keep_a_contexts_requests_together(requests):
    for batch_size in (1, 2, 3, 100):
        batches = context_batches(requests, batch_size)
        assert sorted(i for b in batches for i in b) == list(range(len(requests)))
        home = {}
        for n, batch in enumerate(batches):
            contexts = {tuple(requests[i][1]) for i in batch}
            assert len(contexts) <= batch_size
            for ctx in contexts:
                assert home.setdefault(ctx, n) == n


def test_similar_lengths_bounds_padding():
    assert similar_lengths([3, 10, 4, 4, 9], 10) == [[1, 4], [2, 3, 0]]  # 10, 9 | 4, 4, 3 (padding 1 of 19, 1 of 11)
    assert similar_lengths([5, 5, 5], 2) == [[0, 1], [2]]
    assert similar_lengths([40, 8, 8, 8], 8) == [[0], [1, 2, 3]]
    assert similar_lengths([], 4) == []
