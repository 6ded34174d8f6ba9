"""The packed corpus: the examples it gives back are the ones packed, and its arrays answer lengths and offsets."""

import numpy as np
import pytest

from forgetune.data.corpus import IGNORE_INDEX, Corpus, Example, example_lengths, example_offsets

X = IGNORE_INDEX


def _examples():
    return [
        Example("a", [1, 10, 11, 12], [X, X, 11, 12], [{"role": "user", "content": "q"}], {"slice": True}),
        Example("b", [1, 20], [X, 20], []),
        Example("c", [1, 30, 31, 32, 33], [X, 30, X, 32, 33], [], {"corrupted": True}),  # two assistant turns
        Example("d", [70_000, 2**31 - 1], [X, 2**31 - 1], []),  # ids past int16, up to int32's limit
    ]


def test_pack_gives_back_the_same_examples():
    examples = _examples()
    corpus = Corpus.pack(iter(examples))  # an iterator: packing never needs the list
    assert len(corpus) == 4
    assert list(corpus) == examples
    assert corpus[-1] == examples[-1] and corpus[1:3] == examples[1:3]
    assert type(corpus[0].input_ids) is list and type(corpus[0].input_ids[0]) is int  # readers get plain lists
    with pytest.raises(IndexError):
        corpus[4]


def test_lengths_and_offsets_match_the_examples_without_building_them():
    examples = _examples()
    corpus = Corpus.pack(examples)
    np.testing.assert_array_equal(example_lengths(corpus), [4, 2, 5, 2])
    np.testing.assert_array_equal(example_lengths(corpus), example_lengths(examples))
    np.testing.assert_array_equal(example_offsets(corpus), [0, 2, 3, 6, 7])
    np.testing.assert_array_equal(example_offsets(corpus), example_offsets(examples))


def test_empty_corpus():
    corpus = Corpus.pack([])
    assert len(corpus) == 0 and list(corpus) == []
    np.testing.assert_array_equal(example_offsets(corpus), [0])


@pytest.mark.parametrize(("vocab", "id_bytes"), [(65_536, 2), (128_256, 4)])
def test_two_bytes_and_a_bit_a_token_while_ids_fit_in_16_bits_else_four(vocab, id_bytes):
    rng = np.random.default_rng(0)
    examples = [Example(str(i), ids := rng.integers(0, 50_000, 100).tolist(), [X] * 40 + ids[40:], [])
                for i in range(200)]
    examples[150].input_ids[-1] = examples[150].labels[-1] = vocab - 1  # a late id past 16 bits widens the array
    corpus = Corpus.pack(examples)
    assert corpus.tokens.nbytes == id_bytes * 200 * 100 and corpus.response_bits.nbytes == 200 * 100 // 8
    assert list(corpus) == examples


def test_response_bits_across_byte_and_packing_boundaries(monkeypatch):
    """Examples of odd lengths start mid-byte, and flags are packed in batches: every example's mask survives."""
    import forgetune.data.corpus as corpus_module

    monkeypatch.setattr(corpus_module, "_PACK_FLAGS", 13)  # pack every few examples, leaving a remainder each time
    rng = np.random.default_rng(1)
    examples = []
    for i in range(60):
        ids = rng.integers(0, 100, int(rng.integers(1, 12))).tolist()
        labels = [t if rng.random() < 0.5 else X for t in ids]
        examples.append(Example(str(i), ids, labels, []))
    corpus = Corpus.pack(examples)
    assert list(corpus) == examples
    assert corpus.response_bits.nbytes == -(-sum(len(ex.input_ids) for ex in examples) // 8)


def test_empty_prompt_and_meta_are_fresh_each_time():
    corpus = Corpus.pack([Example("a", [1, 2], [X, 2], [])])
    corpus[0].meta["x"] = 1
    corpus[0].prompt_messages.append({"role": "user", "content": "q"})
    assert corpus[0].meta == {} and corpus[0].prompt_messages == []


def test_labels_must_be_the_ids_on_response_tokens():
    with pytest.raises(ValueError, match="example bad: a response label differs"):
        Corpus.pack([Example("bad", [1, 2, 3], [X, 2, 4], [])])
    with pytest.raises(ValueError, match="example short: 3 input ids, 2 labels"):
        Corpus.pack([Example("short", [1, 2, 3], [X, 2], [])])


def test_loaders_pack_and_features_read_the_packed_corpus(arith_jsonl, tokenizer):
    from forgetune.data.collator import make_features
    from forgetune.data.formats import load_examples
    from forgetune.trainer import example_lengths as feature_lengths

    corpus, counts = load_examples(arith_jsonl, tokenizer)
    assert isinstance(corpus, Corpus) and counts["examples"] == len(corpus) > 0
    flat = np.arange(int(example_offsets(corpus)[-1]), dtype=np.float32)
    features = make_features(corpus, example_offsets(corpus), base_ce=flat)
    assert feature_lengths(features) == [len(ex.input_ids) for ex in corpus]  # length grouping builds no feature
    for i in (0, len(corpus) - 1):  # each example's scores land on its own response positions, in order
        got = np.asarray(features[i]["base_ce"])[np.asarray(corpus[i].labels) != X]
        np.testing.assert_array_equal(got, flat[example_offsets(corpus)[i]:example_offsets(corpus)[i + 1]])
