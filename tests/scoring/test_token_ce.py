"""Per-token CE: the token at position t is scored by the logits at t - 1; flat (batch, position) order."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from forgetune.data.corpus import IGNORE_INDEX, Example, example_offsets
from forgetune.data.formats import Record, tokenize_records
from forgetune.io import NpyFile
from forgetune.models import load_model
from forgetune.scoring.scorer import token_ce
from forgetune.scoring.token_logps import response_token_ce, target_mask

BIG = 100.0  # a logit this far above the others puts all the mass on one token: CE = log(1 + 4 e^-100) == 0 in fp32


def loop_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The definition, one position at a time: -log_softmax(logits[b, t - 1])[labels[b, t]] for t >= 1."""
    out = []
    for b in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            if labels[b, t] != IGNORE_INDEX:
                out.append(-torch.log_softmax(logits[b, t - 1].double(), dim=-1)[labels[b, t]])
    return torch.stack(out).float() if out else torch.zeros(0)


def test_alignment_hand_built_logits():
    """B = 1, T = 4, V = 5, labels = [-100, 2, 3, 4].

    logits[0, 0] puts all mass on 2 (= labels[1]) -> CE(t = 1) = 0
    logits[0, 1] is uniform                       -> CE(t = 2) = ln 5 ~= 1.6094
    logits[0, 2] puts all mass on 4 (= labels[3]) -> CE(t = 3) = 0
    logits[0, 3] would predict a token after the sequence: never used (set to garbage that would change nothing).
    If the code aligned t with logits[t] instead, CE(t = 1) would be ln 5, not 0.
    """
    logits = torch.zeros(1, 4, 5)
    logits[0, 0, 2] = BIG
    logits[0, 2, 4] = BIG
    logits[0, 3, 0] = 1e4
    labels = torch.tensor([[-100, 2, 3, 4]])
    ce = response_token_ce(logits, labels)
    assert ce.dtype == torch.float32
    assert ce.shape == (3,)
    assert ce[0].item() == 0.0
    assert ce[1].item() == pytest.approx(math.log(5.0), rel=1e-6)
    assert ce[2].item() == 0.0


def test_position_zero_never_scored_and_ignore_index_skipped():
    """labels = [1, -100, 3, 4]: position 0 has no preceding logits (skipped), position 1 is -100 (skipped).

    Left: t = 2 (logits[1], all mass on 3 -> 0) and t = 3 (logits[2], all mass on 0, label 4 -> CE = 100).
    """
    logits = torch.zeros(1, 4, 5)
    logits[0, 1, 3] = BIG
    logits[0, 2, 0] = BIG
    labels = torch.tensor([[1, -100, 3, 4]])
    ce = response_token_ce(logits, labels)
    assert ce.shape == (2,)
    assert ce[0].item() == 0.0
    assert ce[1].item() == pytest.approx(BIG, rel=1e-6)
    assert target_mask(labels).tolist() == [[False, False, True, True]]
    assert labels[0, 0].item() == 1  # target_mask works on a copy: the labels themselves are untouched


def test_flat_batch_position_order():
    """B = 2, T = 3: the output is row 0's response tokens then row 1's.

    row 0 labels [-100, 1, 2]: logits[0, 0] -> 1 (CE 0), logits[0, 1] uniform (CE ln 5)
    row 1 labels [-100, 3, -100]: logits[1, 0] uniform (CE ln 5)
    flat = [0, ln 5, ln 5]
    """
    logits = torch.zeros(2, 3, 5)
    logits[0, 0, 1] = BIG
    labels = torch.tensor([[-100, 1, 2], [-100, 3, -100]])
    ce = response_token_ce(logits, labels)
    torch.testing.assert_close(ce, torch.tensor([0.0, math.log(5.0), math.log(5.0)]))


def test_matches_explicit_loop_random():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11) * 3
    labels = torch.randint(0, 11, (3, 7))
    labels[torch.rand(3, 7) < 0.4] = IGNORE_INDEX
    labels[1] = IGNORE_INDEX  # a row with no response token at all
    ce = response_token_ce(logits, labels)
    torch.testing.assert_close(ce, loop_ce(logits, labels), rtol=1e-5, atol=1e-5)
    assert ce.shape[0] == int((labels[:, 1:] != IGNORE_INDEX).sum())


def test_no_response_token():
    logits = torch.randn(2, 3, 5)
    labels = torch.full((2, 3), IGNORE_INDEX)
    with torch.no_grad():
        assert response_token_ce(logits, labels).shape == (0,)
    assert response_token_ce(logits.requires_grad_(), labels).shape == (0,)


def test_chunked_no_grad_path_equals_grad_path():
    """Chunks of 3 rows without grad give the same values as the single differentiable call."""
    torch.manual_seed(1)
    logits = torch.randn(2, 9, 13, requires_grad=True)
    labels = torch.randint(0, 13, (2, 9))
    labels[0, 4] = IGNORE_INDEX
    with_grad = response_token_ce(logits, labels)
    assert with_grad.requires_grad
    with torch.no_grad():
        chunked = response_token_ce(logits, labels, chunk_rows=3)
    with torch.inference_mode():
        one_chunk = response_token_ce(logits.detach(), labels)
    assert not chunked.requires_grad
    torch.testing.assert_close(chunked, with_grad.detach(), rtol=0, atol=0)
    torch.testing.assert_close(one_chunk, with_grad.detach(), rtol=0, atol=0)


def test_gradient_reaches_only_the_scoring_positions():
    """d sum(CE) / d logits is nonzero only at rows t - 1 of response tokens t: here rows 0 and 2 of 4."""
    logits = torch.randn(1, 4, 5, requires_grad=True)
    labels = torch.tensor([[-100, 2, -100, 4]])
    response_token_ce(logits, labels).sum().backward()
    nonzero_rows = logits.grad[0].abs().sum(-1) > 0
    assert nonzero_rows.tolist() == [True, False, True, False]


def test_half_precision_logits_scored_in_fp32():
    torch.manual_seed(2)
    logits = torch.randn(1, 5, 7)
    labels = torch.tensor([[-100, 1, 2, 3, 4]])
    ce = response_token_ce(logits.bfloat16(), labels)
    assert ce.dtype == torch.float32
    torch.testing.assert_close(ce, loop_ce(logits.bfloat16().float(), labels), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- scorer


def make_example(ex_id: str, input_ids: list[int], labels: list[int]) -> Example:
    return Example(ex_id, input_ids, labels, prompt_messages=[])


def test_example_offsets():
    """Response counts 2, 0, 3 -> offsets [0, 2, 2, 5]."""
    examples = [
        make_example("a", [5, 6, 7], [-100, 6, 7]),
        make_example("b", [5, 6], [-100, -100]),
        make_example("c", [5, 6, 7, 8], [-100, 6, 7, 8]),
    ]
    offsets = example_offsets(examples)
    assert offsets.dtype == np.int64
    assert offsets.tolist() == [0, 2, 2, 5]
    assert example_offsets([]).tolist() == [0]


@pytest.fixture(scope="module")
def scored_examples(tokenizer):
    contents = [("Hi", "Hello there, how are you?"), ("What is 2 plus 2?", "4"), ("Name a colour.", "Blue, or red"),
                ("Say nothing much", "ok then"), ("A longer prompt with several words in it", "A long answer too.")]
    records = [
        Record(str(i), [{"role": "user", "content": q}, {"role": "assistant", "content": a}], f"mem:{i}")
        for i, (q, a) in enumerate(contents)
    ]
    examples, _ = tokenize_records(records, tokenizer, max_length=256)
    if len({len(ex.input_ids) for ex in examples}) < 4:
        raise RuntimeError("the test examples should have different lengths so that padding is exercised")
    return examples


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return load_model(tiny_model_dir).eval()


def direct_ce(model, ex: Example) -> np.ndarray:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ex.input_ids])).logits
    return loop_ce(logits, torch.tensor([ex.labels])).numpy()


def test_token_ce_equals_per_example_forward(tiny_model, scored_examples, tokenizer):
    """Batches of 2 sorted by length (so every batch but one pads) give the unpadded per-example CE to 1e-5."""
    out = token_ce(tiny_model, scored_examples, tokenizer.pad_token_id, batch_size=2)
    offsets = example_offsets(scored_examples)
    assert out.dtype == np.float32
    assert out.shape == (offsets[-1],)
    for i, ex in enumerate(scored_examples):
        np.testing.assert_allclose(out[offsets[i] : offsets[i + 1]], direct_ce(tiny_model, ex), rtol=1e-5, atol=1e-5)
    assert (out > 0).all()


def test_token_ce_batch_size_does_not_matter(tiny_model, scored_examples, tokenizer):
    one = token_ce(tiny_model, scored_examples, tokenizer.pad_token_id, batch_size=1)
    many = token_ce(tiny_model, scored_examples, tokenizer.pad_token_id, batch_size=16)
    np.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-5)


def test_token_ce_indices_write_only_their_slices(tiny_model, scored_examples, tokenizer):
    """indices [3, 1] fill examples 3 and 1 of a preset -1 buffer; the other slices stay -1."""
    offsets = example_offsets(scored_examples)
    out = np.full(int(offsets[-1]), -1.0, dtype=np.float32)
    returned = token_ce(tiny_model, scored_examples, tokenizer.pad_token_id, batch_size=2, indices=[3, 1], out=out)
    assert returned is out
    full = token_ce(tiny_model, scored_examples, tokenizer.pad_token_id, batch_size=2)
    for i in range(len(scored_examples)):
        piece = out[offsets[i] : offsets[i + 1]]
        if i in (1, 3):
            np.testing.assert_allclose(piece, full[offsets[i] : offsets[i + 1]], rtol=1e-5, atol=1e-5)
        else:
            assert (piece == -1.0).all()


def test_token_ce_into_an_npy_file_equals_the_array(tiny_model, scored_examples, tokenizer, tmp_path):
    """The score stage's output: written slice by slice to an .npy file that np.load reads as the same array."""
    n = int(example_offsets(scored_examples)[-1])
    with NpyFile(tmp_path / "ce.npy", n) as out:
        assert token_ce(tiny_model, scored_examples, tokenizer.pad_token_id, batch_size=2, indices=[4, 0, 2],
                        out=out) is out
        tail = out[n - 3 :]
    full = token_ce(tiny_model, scored_examples, tokenizer.pad_token_id, batch_size=2)
    written = np.load(tmp_path / "ce.npy")
    assert written.dtype == np.float32 and written.shape == (n,)
    offsets = example_offsets(scored_examples)
    for i in range(len(scored_examples)):  # the indices' slices hold their CE, the others the file's zeros
        expected = full[offsets[i] : offsets[i + 1]] if i in (0, 2, 4) else 0.0
        np.testing.assert_allclose(written[offsets[i] : offsets[i + 1]], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(tail, written[n - 3 :])


def test_npy_file_slices(tmp_path):
    with NpyFile(tmp_path / "a.npy", 10) as a:
        a[2:5] = [1.5, 2.5, 3.5]
        a[-2:] = np.array([9, 8])
        assert a[0:3].tolist() == [0.0, 0.0, 1.5] and len(a) == 10 and a[7:3].size == 0
        a[0:1] += 1  # slices read back writable
        with pytest.raises(ValueError, match="2 values for a slice of 3"):
            a[0:3] = [1, 2]
        with pytest.raises(ValueError, match="contiguous"):
            a[::2]
    assert np.load(tmp_path / "a.npy").tolist() == [1, 0, 1.5, 2.5, 3.5, 0, 0, 0, 9, 8]


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_head_on_response_rows_only_equals_the_full_forward(softcap):
    """Scoring runs the output head on the response rows only (in chunks); it must equal CE of the full logits,
    and a model whose logits are transformed after the head (soft-capping) must take the full forward instead."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from forgetune.scoring.token_logps import model_response_token_ce

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    model = LlamaForCausalLM(config).eval()
    if softcap is not None:
        model.config.final_logit_softcapping = softcap
    input_ids = torch.randint(1, 50, (3, 9))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 6:] = 0  # a right-padded row
    labels = input_ids.clone()
    labels[:, :3] = IGNORE_INDEX
    labels[2, 6:] = IGNORE_INDEX
    with torch.no_grad():
        expected = loop_ce(model(input_ids=input_ids, attention_mask=attention_mask).logits, labels)
    got = model_response_token_ce(model, input_ids, attention_mask, labels, chunk_rows=4)
    assert got.shape == (int(target_mask(labels).sum()),)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_score_stage_subtracts_in_chunks(tmp_path):
    """scores = CE_base - CE_ref and the stage's means, chunk by chunk into a file, equal the whole-array numbers; a
    non-finite score anywhere is counted and refused."""
    from forgetune.errors import ForgetuneError
    from forgetune.pipeline import _subtract_in_chunks

    rng = np.random.default_rng(0)
    base, ref = rng.random(10, dtype=np.float32) * 3, rng.random(10, dtype=np.float32)
    with NpyFile(tmp_path / "scores.npy", 10) as scores:
        stats = _subtract_in_chunks(base, ref, scores, chunk=3)  # chunks of 3, 3, 3 and 1
    np.testing.assert_array_equal(np.load(tmp_path / "scores.npy"), base - ref)
    assert stats["tokens"] == 10
    assert stats["mean_score"] == pytest.approx(float(np.mean(base.astype(np.float64) - ref)), rel=1e-6)
    assert stats["mean_ce_base"] == pytest.approx(float(base.mean()), rel=1e-6)
    assert stats["mean_ce_ref"] == pytest.approx(float(ref.mean()), rel=1e-6)
    base[[1, 8]] = [np.inf, np.nan]
    with pytest.raises(ForgetuneError, match="2 non-finite score"):
        _subtract_in_chunks(base, ref, np.zeros(10, np.float32), chunk=3)
