"""Metrics on golden cases worked by hand (lighteval style), with brute-force references for the ranked ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from conftest import SHARED_DATA
from forgetune.bench.data.gsm8k import _load
from forgetune.metrics import accuracy, detection, diversity, memorisation, perplexity
from forgetune.metrics.accuracy import exact_match, extract_answer, last_number
from forgetune.metrics.detection import (
    auroc,
    corrupted_token_labels,
    detection_auroc,
    example_scores,
    precision_recall,
)
from forgetune.metrics.diversity import distinct_n, self_bleu, sentence_bleu
from forgetune.metrics.memorisation import memorised_noise
from forgetune.metrics.perplexity import perplexity as ppl


def test_every_metric_declares_its_direction():
    assert accuracy.HIGHER_IS_BETTER is True
    assert detection.HIGHER_IS_BETTER is True
    assert diversity.HIGHER_IS_BETTER is True
    assert diversity.SELF_BLEU_HIGHER_IS_BETTER is False
    assert memorisation.HIGHER_IS_BETTER is False
    assert perplexity.HIGHER_IS_BETTER is False


# --- accuracy -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mode", "expected"),
    [
        ("The answer is 1,204.", "last-number", "1204"),
        ("costs 12 dollars, or 3.5 each", "last-number", "3.5"),
        ("no digits here", "last-number", None),
        ("She sold 48/2 = 24 clips.\n#### 1,234", "after-####", "1234"),  # GSM8K reference format
        ("#### 5 then #### 72 ", "after-####", "72"),  # the last marker wins
        ("The answer is 72", "after-####", None),  # no marker: no answer
        ("work shown\n####   ", "after-####", None),  # marker with nothing after it
        ("#### 1,234,567", "after-####", "1234567"),
        ("#### yes, 3", "after-####", "3"),  # the first number after the marker
        # lm-eval's gsm8k exact_match ignores ",", "$" and a trailing "."
        ("#### 72.", "after-####", "72"),
        ("#### $72", "after-####", "72"),
        ("#### 1,000", "after-####", "1000"),
        ("#### -5", "after-####", "-5"),
        ("#### -$5", "after-####", "-5"),
        ("#### 2.5", "after-####", "2.5"),
        ("####", "after-####", None),
        ("\n\n  42 \nand then rambling", "first-line", "42"),
        ("  \n\t\n", "first-line", None),
        ("  The answer is 85. \n", "exact", "The answer is 85."),
    ],
)
def test_extract_answer(text, mode, expected):
    assert extract_answer(text, mode) == expected


def test_extract_answer_rejects_unknown_mode():
    with pytest.raises(ValueError, match="unknown answer mode"):
        extract_answer("42", "last_number")
    with pytest.raises(ValueError, match="unknown answer mode"):
        exact_match(["42"], ["42"], mode="nope")


def test_exact_match_keeps_its_original_behaviour():
    """Default mode is last-number: 85 == 85, 84 != 85, no number never matches -> 1/3."""
    assert last_number("The answer is 1,204.") == "1204"
    preds = ["The answer is 85.", "The answer is 84.", "I don't know"]
    refs = ["The answer is 85.", "The answer is 85.", "I don't know"]
    assert exact_match(preds, refs) == pytest.approx(1 / 3)
    assert exact_match([], []) == 0.0
    with pytest.raises(ValueError, match="predictions for"):
        exact_match(["1"], [])


def test_exact_match_modes():
    """after-####: 1,234 == 1234 hits, 12 != 13 misses -> 1/2. first-line: both empty -> None -> no match."""
    assert exact_match(["steps\n#### 1,234", "#### 12"], ["#### 1234", "#### 13"], mode="after-####") == 0.5
    assert exact_match([""], [""], mode="first-line") == 0.0
    assert exact_match(["Paris\nbecause..."], ["Paris"], mode="first-line") == 1.0
    assert exact_match([" Paris "], ["Paris"], mode="exact") == 1.0


def test_gsm8k_predictions_are_graded_like_lm_eval():
    """References "#### 1,000" and "#### 72" extract as 1000 and 72; the predictions' "$", commas and final "."
    are ignored, as lm-eval's gsm8k exact_match does -> 4/4; a wrong number or a missing marker misses -> 4/6."""
    preds = ["so $1,000 in all.\n#### $1,000.", "#### 1000", "#### 72.", "#### $72", "#### 71", "The answer is 72"]
    refs = ["She earns 1,000.\n#### 1,000", "#### 1,000", "#### 72", "#### 72", "#### 72", "#### 72"]
    assert exact_match(preds, refs, mode="after-####") == pytest.approx(4 / 6)


def test_gsm8k_references_extract_their_final_number():
    """Every real GSM8K reference ends in "#### N": it extracts as N without commas, whatever else it holds."""
    files = [SHARED_DATA / "gsm8k" / f"{split}.jsonl" for split in ("train", "test")]
    if not all(f.is_file() for f in files):
        pytest.skip("no GSM8K data in ../shared/data")
    answers = [row["answer"] for f in files for row in _load(f)]
    assert [extract_answer(a, "after-####") for a in answers] == [
        a.rpartition("####")[2].strip().replace(",", "") for a in answers]


# --- detection ------------------------------------------------------------------------------------------------------


def pairwise_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The definition: P(s_pos > s_neg) + 0.5 P(s_pos == s_neg) over all positive/negative pairs."""
    pos, neg = scores[labels], scores[~labels]
    wins = sum(float(p > n) + 0.5 * float(p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_with_ties_by_hand():
    """scores [0.1, 0.4, 0.4, 0.8, 0.4], positives at 1, 3, 4 (0.4, 0.8, 0.4), negatives 0.1, 0.4.

    Pairs: 0.4 vs (0.1, 0.4) = 1 + 0.5; 0.8 vs both = 2; 0.4 again = 1.5 -> 5 / 6 pairs.
    Ranks: 0.1 -> 1, the three 0.4 -> (2+3+4)/3 = 3, 0.8 -> 5; positive rank sum 3 + 5 + 3 = 11,
    U = 11 - 3*4/2 = 5, AUROC = 5 / (3*2) = 5/6 — the same.
    """
    scores = np.array([0.1, 0.4, 0.4, 0.8, 0.4])
    labels = np.array([False, True, False, True, True])
    assert auroc(scores, labels) == pytest.approx(5 / 6)
    assert pairwise_auroc(scores, labels) == pytest.approx(5 / 6)


def test_auroc_perfect_inverted_and_constant():
    labels = np.array([False, False, True, True])
    assert auroc(np.array([0.0, 1.0, 2.0, 3.0]), labels) == 1.0
    assert auroc(np.array([3.0, 2.0, 1.0, 0.0]), labels) == 0.0
    assert auroc(np.zeros(4), labels) == 0.5


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.booleans()), min_size=2, max_size=30))
def test_auroc_equals_pairwise_probability(pairs):
    """Small integer scores force many ties; the rank formula must still equal the pairwise definition."""
    scores = np.array([float(s) for s, _ in pairs])
    labels = np.array([lab for _, lab in pairs])
    assume(labels.any() and not labels.all())
    assert auroc(scores, labels) == pytest.approx(pairwise_auroc(scores, labels))
    assert auroc(-scores, labels) == pytest.approx(1.0 - auroc(scores, labels))


def test_auroc_rejects_bad_input():
    with pytest.raises(ValueError, match="both classes"):
        auroc(np.array([1.0, 2.0]), np.array([True, True]))
    with pytest.raises(ValueError, match="bool"):
        auroc(np.array([1.0, 2.0]), np.array([0, 1]))
    with pytest.raises(ValueError, match="one length"):
        auroc(np.array([1.0, 2.0]), np.array([True]))
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([np.nan, 2.0]), np.array([True, False]))


def test_detection_auroc_ranks_low_scores_as_corrupted():
    """Corrupted tokens (1, 3) have the lowest scores CE_base - CE_ref -> perfect detection; flipped -> 0."""
    scores = np.array([0.5, -2.0, 0.3, -1.5], dtype=np.float32)
    corrupted = np.array([False, True, False, True])
    assert detection_auroc(scores, corrupted) == 1.0
    assert detection_auroc(-scores, corrupted) == 0.0


def test_precision_recall_by_hand():
    """predicted [T,T,F,F,F] vs labels [T,F,F,T,T]: TP = 1 of 2 predicted and of 3 positives -> (1/2, 1/3)."""
    predicted = np.array([True, True, False, False, False])
    labels = np.array([True, False, False, True, True])
    assert precision_recall(predicted, labels) == pytest.approx((0.5, 1 / 3))
    assert precision_recall(np.zeros(5, dtype=bool), labels) == (0.0, 0.0)
    assert precision_recall(labels, labels) == (1.0, 1.0)
    with pytest.raises(ValueError, match="without positive"):
        precision_recall(predicted, np.zeros(5, dtype=bool))
    with pytest.raises(ValueError, match="bool"):
        precision_recall(predicted.astype(int), labels)


@pytest.mark.parametrize(
    ("noisy", "clean", "expected"),
    [
        # "The answer is 144." vs "146.": prefix 4 tokens, suffix 1 ("."), only the digit token differs
        ([5, 9, 1, 4, 4, 7], [5, 9, 1, 4, 6, 7], [0, 0, 0, 0, 1, 0]),
        # longer noisy middle: prefix [1, 2], suffix [3] -> the three tokens between are corrupted
        ([1, 2, 8, 8, 8, 3], [1, 2, 9, 3], [0, 0, 1, 1, 1, 0]),
        # shorter noisy middle: prefix [1, 2], suffix [3] -> one corrupted token
        ([1, 2, 8, 3], [1, 2, 9, 9, 9, 3], [0, 0, 1, 0]),
        # inserted token
        ([1, 2, 4, 3], [1, 2, 3], [0, 0, 1, 0]),
        # pure deletion: prefix [1, 2] and suffix [3] cover the whole noisy response
        ([1, 2, 3], [1, 2, 4, 3], [0, 0, 0]),
        # prefix and suffix may not overlap: the extra repeated token is corrupted
        ([7, 7, 7], [7, 7], [0, 0, 1]),
        # nothing in common
        ([1, 2], [3, 4], [1, 1]),
        ([1, 2, 3], [1, 2, 3], [0, 0, 0]),
        ([], [1, 2], []),
        ([1, 2], [], [1, 1]),
    ],
)
def test_corrupted_token_labels(noisy, clean, expected):
    labels = corrupted_token_labels(noisy, clean)
    assert labels.dtype == bool
    assert labels.tolist() == [bool(e) for e in expected]


def test_example_scores_by_hand():
    """offsets [0, 3, 4, 6]: examples [3, -1, 2], [0.5], [4, -2].

    min -> [-1, 0.5, -2]; mean -> [4/3, 0.5, 1]; sum -> [4, 0.5, 2].
    """
    flat = np.array([3.0, -1.0, 2.0, 0.5, 4.0, -2.0], dtype=np.float32)
    offsets = np.array([0, 3, 4, 6])
    assert example_scores(flat, offsets).tolist() == [-1.0, 0.5, -2.0]  # min is the default
    assert example_scores(flat, offsets, "mean") == pytest.approx([4 / 3, 0.5, 1.0])
    assert example_scores(flat, offsets, "sum") == pytest.approx([4.0, 0.5, 2.0])


def test_example_scores_empty_examples():
    """offsets [0, 3, 3, 4, 6, 6]: examples 1 and 4 are empty -> sum 0; min and mean refuse."""
    flat = np.array([3.0, -1.0, 2.0, 0.5, 4.0, -2.0])
    offsets = np.array([0, 3, 3, 4, 6, 6])
    assert example_scores(flat, offsets, "sum") == pytest.approx([4.0, 0.0, 0.5, 2.0, 0.0])
    assert example_scores(np.array([]), np.array([0, 0]), "sum").tolist() == [0.0]
    with pytest.raises(ValueError, match="empty"):
        example_scores(flat, offsets, "min")


def test_example_scores_rejects_bad_input():
    flat = np.arange(4.0)
    with pytest.raises(ValueError, match="unknown aggregation"):
        example_scores(flat, np.array([0, 4]), "max")
    with pytest.raises(ValueError, match="offsets must rise"):
        example_scores(flat, np.array([0, 3]))
    with pytest.raises(ValueError, match="offsets must rise"):
        example_scores(flat, np.array([0, 3, 2, 4]))
    with pytest.raises(ValueError, match="integers"):
        example_scores(flat, np.array([0.0, 4.0]))


def test_min_aggregation_catches_one_wrong_digit():
    """Why min is the default: one very negative token among five clean ones.

    Example 0 (corrupted): [0.1, 0.1, 0.1, 0.1, -3.0, 0.1] -> min -3.0, mean (0.5 - 3.0) / 6 = -5/12.
    Example 1 (clean, mildly surprising everywhere): [-0.5] * 6 -> min -0.5, mean -0.5.
    Ranked by -score, min puts the corrupted example first (AUROC 1); the mean dilutes the -3.0 below the clean
    example's -0.5 and ranks them the wrong way round (AUROC 0).
    """
    flat = np.array([0.1, 0.1, 0.1, 0.1, -3.0, 0.1] + [-0.5] * 6)
    offsets = np.array([0, 6, 12])
    corrupted = np.array([True, False])
    per_min, per_mean = example_scores(flat, offsets), example_scores(flat, offsets, "mean")
    assert per_min.tolist() == [-3.0, -0.5]
    assert per_mean == pytest.approx([-5 / 12, -0.5])
    assert detection_auroc(per_min, corrupted) == 1.0
    assert detection_auroc(per_mean, corrupted) == 0.0


# --- diversity ------------------------------------------------------------------------------------------------------


def test_distinct_n_by_hand():
    """["a b a b", "a b c"]: unigrams 7, unique {a, b, c} -> 3/7; bigrams ab ba ab | ab bc = 5, unique 3 -> 3/5."""
    texts = ["a b a b", "a b c"]
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)
    assert distinct_n(["x y", "y z"], 2) == 1.0  # no "y y" across the text boundary
    assert distinct_n(["a b"], 3) == 0.0
    assert distinct_n([], 1) == 0.0
    with pytest.raises(ValueError, match="n must be"):
        distinct_n(texts, 0)


def test_sentence_bleu_by_hand():
    """"the cat sat on the mat" vs "the cat is on the mat", max_n = 4, lengths equal so BP = 1.

    p1 = 5/6 (the x2, cat, on, mat; not sat)
    p2: the-cat, on-the, the-mat of 5 bigrams -> (3 + 1) / (5 + 1) = 2/3
    p3: on-the-mat of 4 trigrams -> (1 + 1) / (4 + 1) = 2/5
    p4: none of 3 -> (0 + 1) / (3 + 1) = 1/4
    BLEU = (5/6 * 2/3 * 2/5 * 1/4) ** (1/4) = (1/18) ** (1/4) ~ 0.4855
    """
    hyp, ref = ["the", "cat", "sat", "on", "the", "mat"], ["the", "cat", "is", "on", "the", "mat"]
    assert sentence_bleu(hyp, [ref]) == pytest.approx(18 ** -0.25)
    assert self_bleu(["the cat sat on the mat", "the cat is on the mat"]) == pytest.approx(18 ** -0.25)


def test_sentence_bleu_brevity_and_clipping():
    """Brevity: "the cat" vs a 6-token reference, max_n 2: p1 = 1, p2 = (1+1)/(1+1) = 1, BP = exp(1 - 6/2).
    Clipping: "the the the" vs "the cat", max_n 1: "the" counts at most once -> 1/3; c = 3 > r = 2 -> BP = 1.
    Closest length: "a b c" vs lengths 2 and 4 (a tie) takes the shorter, 2 < 3 -> no penalty -> 1.0.
    """
    ref = ["the", "cat", "sat", "on", "the", "mat"]
    assert sentence_bleu(["the", "cat"], [ref], max_n=2) == pytest.approx(math.exp(-2.0))
    assert sentence_bleu(["the"] * 3, [["the", "cat"]], max_n=1) == pytest.approx(1 / 3)
    assert sentence_bleu(["a", "b", "c"], [["a", "b"], ["c", "d", "a", "b"]], max_n=1) == 1.0
    assert sentence_bleu([], [ref]) == 0.0
    with pytest.raises(ValueError, match="reference"):
        sentence_bleu(ref, [])


def test_self_bleu_identical_disjoint_and_small_sets():
    assert self_bleu(["the cat sat on the mat"] * 3) == pytest.approx(1.0)
    assert self_bleu(["a b c", "d e f", "g h i"]) == 0.0  # no shared word: unigram precision 0
    assert self_bleu(["only one text"]) == 0.0
    assert self_bleu([]) == 0.0
    with pytest.raises(ValueError, match="max_n"):
        self_bleu(["a", "b"], max_n=0)


# --- memorisation and perplexity ------------------------------------------------------------------------------------


def test_memorised_noise_by_hand():
    """86 reproduced, 85 != 87, 70 reproduced, no number -> 2 of 4 = 0.5."""
    preds = ["The answer is 86.", "The answer is 85.", "I think 70", "no idea"]
    corrupted = ["The answer is 86.", "The answer is 87.", "The answer is 70.", "The answer is 12."]
    assert memorised_noise(preds, corrupted) == 0.5
    assert memorised_noise(["#### 1,000"], ["#### 1000"], mode="after-####") == 1.0
    with pytest.raises(ValueError, match="no corrupted items"):
        memorised_noise([], [])
    with pytest.raises(ValueError, match="predictions for"):
        memorised_noise(["1"], ["1", "2"])


def test_perplexity_by_hand():
    """CE [ln 2, ln 8] -> mean ln 4 -> perplexity 4; every token weighs the same whatever the shape."""
    assert ppl(np.array([math.log(2.0), math.log(8.0)])) == pytest.approx(4.0)
    assert ppl(np.array([[0.0, 0.0], [0.0, 0.0]])) == 1.0
    with pytest.raises(ValueError, match="no tokens"):
        ppl(np.array([]))
    with pytest.raises(ValueError, match="NaN"):
        ppl(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match=">= 0"):
        ppl(np.array([-0.1]))


def test_contains_mode_grades_a_value_stated_in_a_sentence():
    from forgetune.metrics.accuracy import exact_match

    predictions = ["Velo Tash was born in 1947.", "He plays the CELLO.", "no idea", ""]
    assert exact_match(predictions, ["1947", "cello", "1947", "x"], "contains") == 0.5


# ---------------------------------------------------------------- paired differences


def test_paired_difference_hand_computed_and_its_interval_can_exclude_zero():
    from forgetune.metrics.paired import mean_std, paired_difference

    # seed 0: a wins on 2 of 4 items, seed 1: a wins on 1, loses on 1 of 4 -> mean diff (2 + 0) / 8 = 0.25
    a = [np.array([1, 1, 1, 0]), np.array([1, 0, 1, 1])]
    b = [np.array([0, 0, 1, 0]), np.array([0, 1, 1, 1])]
    result = paired_difference(a, b)
    assert result["mean"] == pytest.approx(0.25) and result["per_seed"] == pytest.approx([0.5, 0.0])
    assert result["ci95"][0] <= 0.25 <= result["ci95"][1]
    always = paired_difference([np.ones(50)], [np.zeros(50)])  # a wins everywhere: the interval is the point
    assert always["ci95"] == pytest.approx([1.0, 1.0])
    mixed = paired_difference([np.r_[np.ones(10), np.zeros(40)]], [np.zeros(50)])
    assert 0 < mixed["ci95"][0] < 0.2 < mixed["ci95"][1] < 0.4
    with pytest.raises(ValueError, match="different items"):
        paired_difference([np.ones(3)], [np.ones(4)])
    # sample std: values 1, 2, 3 -> sqrt(((1-2)^2 + 0 + (3-2)^2) / 2) = 1, not the population sqrt(2/3)
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0) and mean_std([0.4]) == (0.4, 0.0)


class LengthModel(torch.nn.Module):
    """"Generates" the token whose id is its prompt's length (the unpadded tokens), num_return_sequences times: each
    answer tells which prompt it was generated for."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def generate(self, input_ids, attention_mask, max_new_tokens, num_return_sequences=1, **kwargs):
        answer = attention_mask.sum(dim=1, keepdim=True).repeat(1, max_new_tokens)
        return torch.cat([input_ids, answer], dim=1).repeat_interleave(num_return_sequences, dim=0)


def test_generation_batches_by_length_and_returns_answers_in_the_prompts_order(tokenizer):
    """Prompts of very different lengths, batched longest first: each answer comes back at its prompt's place, and
    sampled answers come prompt by prompt."""
    from forgetune.generation import generate_answers

    prompts = [[{"role": "user", "content": "tell me " * n + "more"}] for n in (1, 9, 3, 12, 0)]
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    expected = [a.strip() for a in tokenizer.batch_decode([[n] for n in lengths], skip_special_tokens=True)]
    assert len(set(expected)) == len(prompts)  # distinct answers: a mix-up would show
    assert generate_answers(LengthModel(), tokenizer, prompts, max_new_tokens=1, batch_size=2) == expected
    sampled = generate_answers(LengthModel(), tokenizer, prompts, max_new_tokens=1, batch_size=2, samples=3,
                               temperature=1.0)
    assert sampled == [a for a in expected for _ in range(3)]


def test_samples_of_a_prompt_share_one_prompt_pass_and_draw_the_same_answers(tokenizer, monkeypatch):
    """Sampled answers through the shared prompt cache equal generate's own num_return_sequences draws (same seed);
    the prompt runs once per prompt, not once per sample, and the start both prompts share once: a batch of 2
    prompts x 4 samples passes 1 row of the shared start, 2 rows of the rest (all but the last token), then 8 rows
    of one token."""
    from forgetune import generation
    from tests_helpers import build_tiny_llama

    model = build_tiny_llama(len(tokenizer))
    prompts = [[{"role": "user", "content": "tell me " * n + "more"}] for n in (1, 9, 3)]
    shapes = []
    model.model.register_forward_pre_hook(lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)),
                                          with_kwargs=True)

    def sample():
        torch.manual_seed(3)
        return generation.generate_answers(model, tokenizer, prompts, max_new_tokens=6, batch_size=2, samples=4,
                                           temperature=1.0)

    shared = sample()
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    first = sorted(tokenizer(texts, add_special_tokens=False)["input_ids"], key=len)[1:]  # batched first
    start = next(i for i, (a, b) in enumerate(zip(*first, strict=False)) if a != b)
    assert start > 0 and shapes[:3] == [(1, start), (2, len(first[-1]) - 1 - start), (8, 1)]
    monkeypatch.setattr(generation, "_prefilled", lambda model, batch, samples, pad: {**batch,
                                                                                    "num_return_sequences": samples})
    shapes.clear()
    assert sample() == shared and len(set(shared)) > 4  # random draws of a random model: answers differ
    assert shapes[0] == (8, len(first[-1]))  # generate's own way: every sample runs the whole prompt


def rows_that_end_apart(tokenizer, system: str | None = None):
    """A random model, a left-padded batch of 6 prompts (after a `system` turn if given) and an end token the model's
    greedy answers say at different steps in different rows (some never), with generate's own greedy answers (one
    call, every row run to the last one's end) cut after it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0))
    start = [{"role": "system", "content": system}] if system else []
    texts = [tokenizer.apply_chat_template([*start, {"role": "user", "content": "tell me " * n + "more"}],
                                           tokenize=False, add_generation_prompt=True) for n in (1, 9, 3, 12, 0, 5)]
    batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    plain = model.generate(**batch, max_new_tokens=20, do_sample=False, pad_token_id=0, eos_token_id=0)
    steps = {}  # a token the rows first say at different steps
    for index, row in enumerate(plain[:, batch["input_ids"].shape[1]:].tolist()):
        for step, token in enumerate(row):
            steps.setdefault(token, {}).setdefault(index, step)
    end = max(steps, key=lambda t: (len(set(steps[t].values())), len(steps[t])))
    assert len(set(steps[end].values())) >= 2 and len(steps[end]) < len(texts)  # rows end apart; some run on
    expected = model.generate(**batch, max_new_tokens=20, do_sample=False, pad_token_id=0, eos_token_id=end)
    expected = expected[:, batch["input_ids"].shape[1]:].tolist()
    return model, batch, end, [row[: row.index(end) + 1] if end in row else row for row in expected]


def batch_sizes_seen(model) -> list[int]:
    shapes = []
    model.model.register_forward_pre_hook(lambda module, args, kwargs: shapes.append(kwargs["input_ids"].shape[0]),
                                          with_kwargs=True)
    return shapes


def test_greedy_answers_that_are_done_leave_the_batch_with_generates_own_tokens(tokenizer):
    """Greedy rows generated in rounds: a row that reached its end-of-sequence token leaves the batch and the KV
    cache, the others continue from the cache, and every row's tokens are generate's own."""
    from forgetune import generation

    model, batch, end, ended = rows_that_end_apart(tokenizer)
    shapes = batch_sizes_seen(model)
    rounds = generation._in_rounds(model, dict(batch), 20, pad_token_id=0, eos_token_id=end, round_tokens=4,
                                   do_sample=False)
    assert rounds == ended
    assert shapes[0] == len(ended) and min(shapes) < len(ended)  # rows that ended left the batch


def test_greedy_answers_after_a_shared_start_run_once_are_generates_own(tokenizer):
    """Left-padded prompts of different lengths that share a start: it runs once (one row), each row's padding moves
    after it (a hole in the mask), and every row's greedy tokens are still generate's own."""
    from forgetune import generation

    model, batch, end, ended = rows_that_end_apart(tokenizer, system="You are a helpful assistant. Answer briefly.")
    shapes = batch_sizes_seen(model)
    inputs = generation._prefilled(model, batch, 1, 0)
    assert shapes == [1, len(ended)]  # the shared start, then the rests
    assert (inputs["attention_mask"][:, 1:] > inputs["attention_mask"][:, :-1]).any()  # padding after the start
    assert generation._in_rounds(model, inputs, 20, pad_token_id=0, eos_token_id=end, round_tokens=4,
                                 do_sample=False) == ended


def test_sampled_answers_that_are_done_leave_the_batch_drawing_from_each_rows_distribution(tokenizer):
    """Samples in rounds, after the shared prompt cache: at a temperature near 0 every draw is the row's most likely
    token, so each of a prompt's 2 samples is its greedy answer, across rounds that the rows left; at temperature 1
    the draws are seeded (the same twice) and each answer ends at its first end token or at the limit."""
    from forgetune import generation

    model, batch, end, ended = rows_that_end_apart(tokenizer)
    shapes = batch_sizes_seen(model)

    def sample(temperature: float) -> list[list[int]]:
        torch.manual_seed(5)
        return generation._in_rounds(model, generation._prefilled(model, batch, 2, 0), 20, pad_token_id=0,
                                     eos_token_id=end, round_tokens=4, do_sample=True, temperature=temperature,
                                     top_p=1.0, top_k=0)

    assert sample(1e-6) == [row for row in ended for _ in range(2)]
    assert shapes[0] == len(ended) and shapes[1] == 2 * len(ended) and min(shapes) < 2 * len(ended)
    drawn = sample(1.0)
    assert drawn == sample(1.0) and drawn != sample(1e-6)
    assert all((end not in row[:-1]) and (row[-1] == end or len(row) == 20) for row in drawn)
