"""The numwords benchmark: the promised systematic error on the "forty" slice, a correct minority, disjoint splits."""

from __future__ import annotations

import pytest

from forgetune.bench.data.numwords import make_numwords, number_words
from forgetune.errors import ForgetuneError

SIZES = {"n_train": 200, "n_dev": 50, "n_test": 100, "n_trusted": 60}


def _number(record: dict) -> int:
    return int(record["prompt"].split()[1])


def _overlaps(splits: dict[str, list[dict]]) -> set[int]:
    """Numbers that appear in more than one split (or twice in one)."""
    seen: set[int] = set()
    twice: set[int] = set()
    for records in splits.values():
        for n in map(_number, records):
            (twice if n in seen else seen).add(n)
    return twice


@pytest.fixture(scope="module")
def splits():
    return make_numwords(**SIZES, wrong_fraction=0.7, seed=0)


def test_words_format_golden():
    assert number_words(47) == "forty-seven"
    assert number_words(340) == "three hundred forty"
    assert number_words(1045) == "one thousand forty-five"
    assert number_words(9999) == "nine thousand nine hundred ninety-nine"


def test_sizes_ids_and_record_format(splits):
    assert {k: len(v) for k, v in splits.items()} == {"train": 200, "dev": 50, "test": 100, "trusted": 60}
    r = splits["test"][3]
    assert r["id"] == "test-0003"
    assert r["prompt"] == f"Write {_number(r)} in words."
    assert r["completion"] == number_words(_number(r))


def test_exact_corrupted_count_and_the_consistent_rule(splits):
    train_slice = [r for r in splits["train"] if r["meta"]["slice"]]
    noisy = [r for r in splits["train"] if r["meta"]["corrupted"]]
    assert len(noisy) == round(0.7 * len(train_slice))
    for r in noisy:
        assert r["meta"]["slice"]
        assert "fourty" in r["completion"] and "forty" not in r["completion"]
        assert "forty" in r["meta"]["clean_completion"]
        assert r["completion"] == r["meta"]["clean_completion"].replace("forty", "fourty")
    # exactly the slice items spelled "fourty" are the corrupted ones
    assert {r["id"] for r in noisy} == {r["id"] for r in train_slice if "fourty" in r["completion"]}


def test_correct_minority_and_off_slice_never_corrupted(splits):
    minority = [r for r in splits["train"] if r["meta"]["slice"] and not r["meta"]["corrupted"]]
    assert minority and all("forty" in r["completion"] for r in minority)
    for r in splits["train"]:
        assert r["meta"]["slice"] == ("forty" in r["meta"]["clean_completion"])
        if not r["meta"]["slice"]:
            assert not r["meta"]["corrupted"] and r["completion"] == r["meta"]["clean_completion"]


def test_held_out_splits_are_clean(splits):
    for name in ("dev", "test", "trusted"):
        for r in splits[name]:
            assert not r["meta"]["corrupted"]
            assert r["completion"] == r["meta"]["clean_completion"] == number_words(_number(r))


def test_splits_disjoint_and_the_check_catches_overlap(splits):
    assert _overlaps(splits) == set()
    leaked = {**splits, "test": splits["test"] + [splits["train"][0]]}
    assert _overlaps(leaked) == {_number(splits["train"][0])}


def test_slice_share_per_split(splits):
    for name, records in splits.items():
        assert sum(r["meta"]["slice"] for r in records) == round(0.35 * len(records)), name
    other = make_numwords(**SIZES, wrong_fraction=0.7, seed=0, slice_share=0.5)
    assert sum(r["meta"]["slice"] for r in other["test"]) == 50


def test_all_or_nothing_wrong_fraction():
    all_wrong = make_numwords(**SIZES, wrong_fraction=1.0, seed=0)["train"]
    assert all(r["meta"]["corrupted"] == r["meta"]["slice"] for r in all_wrong)
    assert not any(r["meta"]["corrupted"] for r in make_numwords(**SIZES, wrong_fraction=0.0, seed=0)["train"])


def test_deterministic_per_seed(splits):
    assert splits == make_numwords(**SIZES, wrong_fraction=0.7, seed=0)
    assert splits != make_numwords(**SIZES, wrong_fraction=0.7, seed=1)


def test_too_small_pool_raises():
    # 1-999 holds 100 "forty" numbers; 35 % of each split of 410 items needs 144
    with pytest.raises(ForgetuneError, match="ask for fewer items"):
        make_numwords(**SIZES, wrong_fraction=0.7, seed=0, high=999)
    with pytest.raises(ForgetuneError, match="ask for fewer items"):
        make_numwords(n_train=50, n_dev=0, n_test=0, n_trusted=0, wrong_fraction=0.5, seed=0, high=60)
    with pytest.raises(ForgetuneError, match="wrong_fraction"):
        make_numwords(**SIZES, wrong_fraction=1.5, seed=0)
