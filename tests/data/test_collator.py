"""Flat corpus-order arrays (polarity, base CE) spread onto response positions, then padded into batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forgetune.data.collator import Collator, make_features, response_positions, spread
from forgetune.data.corpus import Example, example_offsets
from forgetune.data.formats import Record, tokenize_records
from forgetune.scoring.token_logps import target_mask

PAD = 0


@pytest.fixture
def examples() -> list[Example]:
    """Three examples; the third has two response spans (a multi-turn conversation)."""
    return [
        Example("a", [10, 11, 12, 13, 14], [-100, -100, 12, 13, 14], []),  # 3 response tokens at 2, 3, 4
        Example("b", [20, 21, 22], [-100, 21, 22], []),  # 2 at 1, 2
        Example("c", [30, 31, 32, 33, 34, 35], [-100, 31, -100, -100, 34, 35], []),  # 3 at 1, 4, 5
    ]


FLAT_POLARITY = np.array([1, -1, 1, -1, 1, 0, 1, -1], dtype=np.int8)
FLAT_BASE_CE = np.arange(1, 9, dtype=np.float32) / 10  # 0.1 ... 0.8


def test_response_positions_and_spread():
    labels = [-100, 7, -100, 9]
    assert response_positions(labels).tolist() == [1, 3]
    assert spread(np.array([5, 6]), labels) == [0, 5, 0, 6]
    assert spread(np.array([0.5, 0.25], dtype=np.float32), labels, 0.0) == [0.0, 0.5, 0.0, 0.25]


def test_make_features_places_flat_values_at_response_positions(examples):
    offsets = example_offsets(examples)
    assert offsets.tolist() == [0, 3, 5, 8]
    feats = make_features(examples, offsets, FLAT_POLARITY, FLAT_BASE_CE)
    assert [f["polarity"] for f in feats] == [[0, 0, 1, -1, 1], [0, -1, 1], [0, 0, 0, 0, 1, -1]]
    # the 0 at position 1 of "c" is a real (ignored) polarity from the flat array (index 5), not a fill value
    np.testing.assert_allclose(feats[0]["base_ce"], [0, 0, 0.1, 0.2, 0.3], rtol=1e-6)
    np.testing.assert_allclose(feats[1]["base_ce"], [0, 0.4, 0.5], rtol=1e-6)
    np.testing.assert_allclose(feats[2]["base_ce"], [0, 0.6, 0, 0, 0.7, 0.8], rtol=1e-6)
    for f, ex in zip(feats, examples, strict=True):
        assert f["input_ids"] == ex.input_ids
        assert f["labels"] == ex.labels


def test_make_features_without_arrays(examples):
    feats = make_features(examples)
    assert all(set(f) == {"input_ids", "labels"} for f in feats)
    feats = make_features(examples, example_offsets(examples), polarity=FLAT_POLARITY)
    assert all(set(f) == {"input_ids", "labels", "polarity"} for f in feats)


def test_make_features_rejects_misaligned_offsets(examples):
    with pytest.raises(ValueError, match="example b: 2 response tokens, 3 scores"):
        make_features(examples, np.array([0, 3, 6, 8]), FLAT_POLARITY)


def test_collator_right_padding(examples):
    batch = Collator(PAD)(make_features(examples, example_offsets(examples), FLAT_POLARITY, FLAT_BASE_CE))
    assert set(batch) == {"input_ids", "labels", "polarity", "base_ce", "attention_mask"}
    assert batch["input_ids"].shape == (3, 6)
    assert batch["input_ids"].dtype == batch["labels"].dtype == batch["polarity"].dtype == torch.long
    assert batch["base_ce"].dtype == torch.float32
    assert batch["input_ids"][1].tolist() == [20, 21, 22, PAD, PAD, PAD]
    assert batch["labels"][1].tolist() == [-100, 21, 22, -100, -100, -100]
    assert batch["polarity"][1].tolist() == [0, -1, 1, 0, 0, 0]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [1] * 6]
    torch.testing.assert_close(batch["base_ce"][0], torch.tensor([0, 0, 0.1, 0.2, 0.3, 0]))


def test_collator_left_padding(examples):
    feats = make_features(examples, example_offsets(examples), FLAT_POLARITY, FLAT_BASE_CE)
    batch = Collator(PAD, padding_side="left")(feats)
    assert batch["input_ids"][1].tolist() == [PAD, PAD, PAD, 20, 21, 22]
    assert batch["labels"][1].tolist() == [-100, -100, -100, -100, 21, 22]
    assert batch["polarity"][1].tolist() == [0, 0, 0, 0, -1, 1]
    torch.testing.assert_close(batch["base_ce"][1], torch.tensor([0, 0, 0, 0, 0.4, 0.5]))
    assert batch["attention_mask"].tolist() == [[0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1], [1] * 6]


def test_pad_to_multiple_of(examples):
    batch = Collator(7, pad_to_multiple_of=4)(make_features(examples[:2]))
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][0].tolist() == [10, 11, 12, 13, 14, 7, 7, 7]
    assert batch["attention_mask"][0].tolist() == [1] * 5 + [0] * 3


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("subset", [[0, 1, 2], [2, 0], [1]])
def test_target_mask_reproduces_flat_slices(examples, side, subset):
    """batch["polarity"][target_mask(labels)] == the concatenated flat slices of the batch's examples, in order."""
    offsets = example_offsets(examples)
    feats = make_features(examples, offsets, FLAT_POLARITY, FLAT_BASE_CE)
    batch = Collator(PAD, padding_side=side)([feats[i] for i in subset])
    mask = target_mask(batch["labels"])
    expected_pol = np.concatenate([FLAT_POLARITY[offsets[i] : offsets[i + 1]] for i in subset])
    expected_ce = np.concatenate([FLAT_BASE_CE[offsets[i] : offsets[i + 1]] for i in subset])
    assert batch["polarity"][mask].tolist() == expected_pol.tolist()
    np.testing.assert_allclose(batch["base_ce"][mask].numpy(), expected_ce, rtol=1e-6)
    assert int(mask.sum()) == sum(examples[i].num_response_tokens for i in subset)


def test_target_mask_alignment_on_tokenized_examples(tokenizer):
    """Same property on real tokenised conversations (multi-turn included), with per-token ids as the flat array."""
    records = [
        Record("0", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}], "m:0"),
        Record("1", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                     {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
                     {"role": "assistant", "content": "6, of course"}], "m:1"),
    ]
    examples, _ = tokenize_records(records, tokenizer, max_length=128)
    offsets = example_offsets(examples)
    flat = np.arange(int(offsets[-1]), dtype=np.int64) + 1  # 1..N: each token's corpus index, never 0
    batch = Collator(tokenizer.pad_token_id)(make_features(examples, offsets, polarity=flat))
    mask = target_mask(batch["labels"])
    assert batch["polarity"][mask].tolist() == flat.tolist()
    assert (batch["polarity"][~mask] == 0).all()
    # and each selected polarity sits on the very token it was computed for
    flat_labels = np.concatenate([[x for x in ex.labels if x != -100] for ex in examples])
    assert batch["labels"][mask].tolist() == flat_labels.tolist()


def test_features_index_like_a_list(examples):
    eager = [make_features(examples, example_offsets(examples), FLAT_POLARITY)[i] for i in range(len(examples))]
    feats = make_features(examples, example_offsets(examples), FLAT_POLARITY)
    assert list(feats) == eager and feats[1:] == eager[1:] and feats[-1] == eager[-1]
    with pytest.raises(IndexError):
        feats[len(examples)]
