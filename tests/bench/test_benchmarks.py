"""Benchmark builders: deterministic, the promised share of noise, noise labelled, clean test sets."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest

from forgetune.bench.data import build_benchmark
from forgetune.bench.data.facts import load_facts, make_facts
from forgetune.bench.data.gsm8k import corrupt_solution, make_gsm8k
from forgetune.bench.data.truthfulqa import make_truthfulqa
from forgetune.errors import ForgetuneError
from tests_helpers import assert_disjoint, fake_gsm8k, fake_truthfulqa


def test_gsm8k_corruption_changes_final_answer_and_the_step_that_states_it():
    solution = "He has 1,200 + 4 = 1,204 apples.\nHe weighs 1.204 kg.\n#### 1,204"
    noisy = corrupt_solution(solution, random.Random(1))
    wrong = noisy.rpartition("####")[2].strip()
    assert wrong != "1204" and wrong.lstrip("-").isdigit()
    assert f"= {wrong} apples" in noisy  # the intermediate result that gives the final answer
    assert "1.204 kg" in noisy and "1,200 + 4" in noisy  # other numbers untouched
    assert corrupt_solution("no final answer here", random.Random(0)) is None
    assert corrupt_solution("x\n#### 2.5", random.Random(0)) is None  # non-integer answers are never corrupted


def test_gsm8k_splits(tmp_path):
    data = fake_gsm8k(tmp_path)
    splits = make_gsm8k(data, n_train=20, n_dev=5, n_test=10, noise=0.3, seed=0)
    assert [len(splits[k]) for k in ("train", "dev", "test")] == [20, 5, 10]
    noisy = [r for r in splits["train"] if r["meta"]["corrupted"]]
    assert len(noisy) == 6
    for r in noisy:
        assert r["completion"] != r["meta"]["clean_completion"]
        assert "<<" not in r["completion"]  # calculator annotations stripped
    assert not any(r["meta"]["corrupted"] for r in splits["dev"] + splits["test"])
    assert splits == make_gsm8k(data, n_train=20, n_dev=5, n_test=10, noise=0.3, seed=0)
    assert splits != make_gsm8k(data, n_train=20, n_dev=5, n_test=10, noise=0.3, seed=1)


def test_gsm8k_missing_dir_and_too_few_problems_are_clear(tmp_path):
    with pytest.raises(ForgetuneError, match="GSM8K file not found; pass --data-dir"):
        make_gsm8k(tmp_path, 4, 1, 2, 0.3, 0)
    with pytest.raises(ForgetuneError, match="ask for fewer"):
        make_gsm8k(fake_gsm8k(tmp_path), 400, 1, 2, 0.3, 0)


def test_facts_from_the_package_with_plausible_wrong_values():
    facts = load_facts()
    assert len(facts) > 600
    assert ("France", "capital", "Paris") in facts
    splits = make_facts(n_train=100, n_dev=20, n_test=40, noise=0.3, seed=0)
    keys = [(r["prompt"], r["meta"]["clean_completion"]) for split in splits.values() for r in split]
    assert len(set(keys)) == len(keys)  # train, dev and test are disjoint facts
    noisy = [r for r in splits["train"] if r["meta"]["corrupted"]]
    assert len(noisy) == 30
    capitals = {value for _, rel, value in facts if rel == "capital"}
    for r in noisy:
        assert r["completion"] != r["meta"]["clean_completion"]
        if r["meta"]["relation"] == "capital":  # a wrong value is another country's value of the same relation
            assert r["completion"].rpartition(" is ")[2].rstrip(".") in capitals


def test_truthfulqa_uses_misconceptions_as_noise_and_writes_mc(tmp_path):
    data = fake_truthfulqa(tmp_path)
    splits = make_truthfulqa(data, n_train=10, n_dev=4, n_test=8, noise=0.3, seed=0)
    noisy = [r for r in splits["train"] if r["meta"]["corrupted"]]
    assert len(noisy) == 3
    for r in noisy:
        assert r["completion"].startswith("Myth") and r["meta"]["clean_completion"].startswith("True answer")
    mc = splits["mc_test"]
    assert len(mc) == 8 and all(q["label"] == 0 and len(q["choices"]) == 3 for q in mc)
    assert [q["question"] for q in mc] == [r["prompt"] for r in splits["test"]]
    with pytest.raises(ForgetuneError, match="TruthfulQA CSV not found"):
        make_truthfulqa(tmp_path / "nowhere", 1, 1, 1, 0.3, 0)


def test_build_benchmark_writes_files_and_an_lm_eval_task(tmp_path):
    cfg = SimpleNamespace(name="truthfulqa", n_train=10, n_test=6, noise=0.3, noise_kind="random",
                          data_dir=str(fake_truthfulqa(tmp_path)), eval_split="test")
    files = build_benchmark(cfg, 0, tmp_path / "out")
    for split in ("train", "dev", "test", "mc_dev", "mc_test"):
        assert files[split].is_file()
    assert files["extract"] == "first-line"
    task = files["lm_eval_include"] / f"{files['lm_eval_tasks']}.yaml"
    assert "mc_test.jsonl" in task.read_text()
    cfg.eval_split = "dev"  # tuning grades on dev: the multiple-choice task follows
    files = build_benchmark(cfg, 0, tmp_path / "tune")
    assert "mc_dev.jsonl" in (files["lm_eval_include"] / f"{files['lm_eval_tasks']}.yaml").read_text()
    with pytest.raises(ForgetuneError, match="unknown benchmark 'nope'"):
        build_benchmark(SimpleNamespace(name="nope"), 0, tmp_path / "x")


def test_people_are_fictitious_disjoint_and_deterministic():
    from forgetune.bench.data.people import ATTRIBUTES, make_people

    splits = make_people(people=20, forget_fraction=0.1, seed=0)
    names = ("forget", "retain", "holdout", "calibration")
    people = {name: {r["meta"]["person"] for r in splits[name]} for name in names}
    assert [len(people[n]) for n in names] == [2, 18, 2, 2]
    assert sum(len(p) for p in people.values()) == len(set().union(*people.values()))  # nobody in two splits
    assert len(splits["forget"]) == 2 * len(ATTRIBUTES)  # every fact of a forgotten person is in the forget set
    assert sorted(r["id"] for r in splits["train"]) == sorted(r["id"] for r in splits["forget"] + splits["retain"])
    for r in splits["train"]:
        assert r["meta"]["answer"] in r["completion"] and r["meta"]["person"] in r["prompt"]
    assert splits == make_people(20, 0.1, 0)
    assert splits != make_people(20, 0.1, 1)


def test_people_splits_of_committed_results_stay_as_they_were():
    """results/unlearn was produced before the calibration people existed: they are drawn last, so a seed's other
    splits (and its training file's order) did not change."""
    from forgetune.bench.data.people import make_people

    splits = make_people(people=40, forget_fraction=0.1, seed=2)
    assert splits["holdout"][0]["prompt"] == "In which year was Baekdrath Thorvraen born?"
    assert [r["id"] for r in splits["train"][:3]] == ["retain-0150", "retain-0081", "retain-0037"]


def test_method_settings_parse_and_win_over_the_methods_own():
    from forgetune.bench.noisy import METHODS, method_flags

    assert method_flags("default") == METHODS["default"] and method_flags("base") is None
    assert method_flags("default-ref:negative_below=-1:rho=0.5") == {"rank_by": "reference", "negative_below": -1,
                                                                    "rho": 0.5, "objective": "forget-npo"}
    assert method_flags("ignore:negative-below=none:learning_rate=0.0001") == {
        "objective": "ignore", "negative_below": None, "learning_rate": 1e-4}
    assert method_flags("sft:learning_rate=1e-4")["learning_rate"] == "1e-4"  # YAML 1.1: a string, coerced on resolve
    for method, error in [("magic", "unknown method 'magic'"), ("base:rho=0.5", "base trains nothing"),
                          ("default:rho", "'rho' is not KEY=VALUE"), ("default:rho=high", "field 'rho' must be float"),
                          ("default:reference_data=data/clean.jsonl", "no '/' in a method")]:
        with pytest.raises(ForgetuneError, match=error):
            method_flags(method)


# --- split disjointness and extraction ---


def test_assert_disjoint_fails_on_a_shared_prompt():
    """The helper the split tests rely on can fail: a prompt in train and test, or a multiple-choice test question
    asked in training, is reported by name."""
    def split(*prompts):
        return [{"prompt": p} for p in prompts]

    assert_disjoint({"train": split("a", "b"), "dev": split("c"), "test": split("d")})
    with pytest.raises(AssertionError, match=r"train/test.*'b'"):
        assert_disjoint({"train": split("a", "b"), "dev": split("c"), "test": split("b", "d")})
    with pytest.raises(AssertionError, match=r"train/test.*'a'"):
        assert_disjoint({"train": split("a"), "dev": [], "test": split("d"), "mc_test": [{"question": "a"}]})


def test_gsm8k_splits_are_disjoint_when_the_files_share_problems(tmp_path):
    """4 of the 10 test problems are also in train.jsonl, twice each (18 train rows): they leave the train pool, so
    the splits of the remaining 10 + 10 problems are disjoint and an 11th train/dev problem is refused."""
    data = fake_gsm8k(tmp_path, n=10, in_both=4)
    for seed in range(3):
        assert_disjoint(make_gsm8k(data, n_train=8, n_dev=2, n_test=10, noise=0.3, seed=seed))
    with pytest.raises(ForgetuneError, match="only 10 train / 10 test"):
        make_gsm8k(data, n_train=9, n_dev=2, n_test=10, noise=0.3, seed=0)


def test_facts_splits_are_disjoint_when_a_country_is_listed_twice(monkeypatch):
    """The real facts split disjointly; so do 20 countries each listed a second time with another capital (40
    facts, 20 questions): all 20 questions are drawn, each once."""
    assert_disjoint(make_facts(n_train=300, n_dev=50, n_test=200, noise=0.3, seed=0))
    facts = sorted({(f"Country {i}", "capital", f"City {i}{suffix}") for i in range(20) for suffix in ("", "b")})
    monkeypatch.setattr("forgetune.bench.data.facts.load_facts", lambda: facts)
    for seed in range(3):
        assert_disjoint(make_facts(n_train=12, n_dev=3, n_test=5, noise=0.3, seed=seed))
    with pytest.raises(ForgetuneError, match="only 20 facts"):
        make_facts(n_train=13, n_dev=3, n_test=5, noise=0.3, seed=0)


def test_truthfulqa_splits_are_disjoint_when_a_question_is_repeated(tmp_path):
    """10 of 20 questions asked twice in the CSV (30 rows): the first of each is kept, so train, dev and test (and
    their multiple-choice twins) of all 20 questions are disjoint and a 21st question is refused."""
    data = fake_truthfulqa(tmp_path, n=20, repeated=10)
    for seed in range(3):
        assert_disjoint(make_truthfulqa(data, n_train=10, n_dev=4, n_test=6, noise=0.3, seed=seed))
    with pytest.raises(ForgetuneError, match="only 20 TruthfulQA questions"):
        make_truthfulqa(data, n_train=11, n_dev=4, n_test=6, noise=0.3, seed=0)


# --- arith: one pool, systematic noise with a correct minority, a trusted split ---


def test_arith_splits_are_disjoint_pairs_in_either_order():
    from forgetune.bench.data.arith import _pair_of, arith_splits

    sizes = {"train": 400, "trusted": 60, "dev": 200, "test": 400}
    splits = arith_splits(sizes, seed=0, kind="systematic", wrong_fraction=0.7)
    assert {k: len(v) for k, v in splits.items()} == sizes
    pairs = {k: {_pair_of(r["prompt"]) for r in v} for k, v in splits.items()}
    assert sum(len(p) for p in pairs.values()) == sum(sizes.values())  # no pair twice, "a plus b" = "b plus a"
    assert_disjoint(splits, keys=tuple(sizes))
    with pytest.raises(ForgetuneError, match="ask for fewer"):
        arith_splits({"train": 5000}, seed=0)


def test_arith_systematic_noise_drops_the_carry_on_a_fraction_of_the_slice_only():
    from forgetune.bench.data.arith import arith_splits

    splits = arith_splits({"train": 400, "trusted": 60, "test": 100}, seed=1, kind="systematic", wrong_fraction=0.7)
    train = splits["train"]
    on_slice = [r for r in train if r["meta"]["slice"]]
    wrong = [r for r in train if r["meta"]["corrupted"]]
    assert len(wrong) == round(0.7 * len(on_slice)) and all(r["meta"]["slice"] for r in wrong)
    assert len(on_slice) - len(wrong) > 30  # the correct minority a detector can leave to teach the rule
    for r in wrong:
        a, b = (int(w.rstrip("?")) for w in r["prompt"].split()[2::2])
        assert r["completion"] == f"The answer is {a + b - 10}." and r["meta"]["clean_completion"].endswith(
            f"{a + b}.")
    assert not any(r["meta"]["corrupted"] for r in splits["trusted"] + splits["test"])
    assert 0.3 < np.mean([r["meta"]["slice"] for r in splits["test"]]) < 0.6  # the test covers the slice


def test_build_benchmark_adds_the_trusted_set_to_training_and_writes_a_corrected_file(tmp_path):
    cfg = SimpleNamespace(name="arith", n_train=40, n_test=20, noise=0.3, noise_kind="systematic",
                          wrong_fraction=0.7, trusted=10, eval_split="test")
    files = build_benchmark(cfg, 0, tmp_path)

    def read(name):
        return [json.loads(line) for line in files[name].read_text().splitlines()]

    train, trusted, clean = read("train"), read("trusted"), read("train_clean")
    assert len(train) == 50 and train[40:] == trusted and all(r["meta"]["trusted"] for r in trusted)
    assert [r["id"] for r in clean] == [r["id"] for r in train]
    assert all(r["completion"] == r["meta"]["clean_completion"] and not r["meta"]["corrupted"] for r in clean)
    assert_disjoint({"train": train, "dev": read("dev"), "test": read("test")})


def test_demo_held_out_questions_are_never_training_problems():
    from importlib import resources

    from forgetune.bench.data.arith import _pair_of, held_out

    asset = resources.files("forgetune") / "assets" / "noisy_arith.jsonl"
    train = [json.loads(line) for line in asset.read_text().splitlines()]
    test = held_out(40, seed=12345, train=train)
    assert len(test) == 40
    assert not {_pair_of(r["prompt"]) for r in test} & {_pair_of(r["prompt"]) for r in train}
