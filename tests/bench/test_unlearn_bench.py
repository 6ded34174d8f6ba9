"""`forgetune bench unlearn` end to end on the tiny model: rows, metrics, outputs, resume."""

from __future__ import annotations

import json

import pytest
import yaml

from forgetune.bench import unlearning as unlearn_bench
from forgetune.bench.unlearning import METRICS
from forgetune.cli import main
from forgetune.errors import ForgetuneError

pytestmark = pytest.mark.slow  # a real process, a whole bench or many stages: `pytest -m 'not slow'` skips it

SMALL = ["--people", "10", "--retain-eval", "6", "--utility-questions", "4", "--max-steps", "1",
         "--max-new-tokens", "4", "--quiet"]


def test_bench_unlearn_rows_metrics_and_resume(tiny_model_dir, tmp_path, capsys, monkeypatch):
    args = ["bench", "unlearn", "--model", str(tiny_model_dir), "--results", str(tmp_path), *SMALL]
    assert main([*args, "--methods", "ga,npo-tokens,ga-stop"]) == 0
    root = tmp_path / "unlearn"
    results = json.loads((root / "results.json").read_text())
    rows = {r["method"]: r for r in results["runs"]}
    assert list(rows) == ["retain-only", "base", "finetuned", "ga", "npo-tokens", "ga-stop"]
    for name, row in rows.items():
        assert row["UA"] == 1 - row["forget_acc"] and row["RA"] == row["retain_acc"] and row["TA"] == row["utility_acc"]
        assert all(0.0 <= row[m] <= 1.0 for m in METRICS if m.startswith("mia_") or m == "forget_quality")
        assert (row["seconds"] is None) == (name in ("retain-only", "base", "finetuned"))
    assert rows["retain-only"]["forget_quality"] == 1.0  # its own forget losses are the never-seen sample
    assert (root / "runs" / "seed0" / "npo-tokens" / "model" / "config.json").is_file()
    stopped = yaml.safe_load((root / "runs" / "seed0" / "ga-stop" / "config.yaml").read_text())
    # the calibration people, not the MIA's non-members
    assert stopped["unlearn"]["holdout"] == str(root / "data" / "seed0" / "calibration.jsonl")
    assert rows["ga-stop"]["steps"] == 1 and rows["ga"]["steps"] == 1
    assert (root / "tradeoff.png").stat().st_size > 0 and "| ga | 1 |" in (root / "results.md").read_text()
    # More seeds and methods add rows; finished ones stay as they were
    assert main([*args, "--methods", "ga,graddiff", "--seeds", "2"]) == 0
    runs = json.loads((root / "results.json").read_text())["runs"]
    assert [r for r in runs if r["seed"] == 0 and r["method"] == "ga"] == [rows["ga"]]
    assert sorted(r["seed"] for r in runs if r["method"] == "graddiff") == [0, 1]
    table = (root / "results.md").read_text()  # methods of the earlier run stay in the tables
    assert "| npo-tokens | 1 |" in table and "| ga-stop | 1 |" in table and "| graddiff | 2 |" in table
    assert "| ga-stop | 1 |" in (root / "targets.md").read_text()
    capsys.readouterr()
    def no_grading(*_):
        raise AssertionError("a finished seed was graded again")

    monkeypatch.setattr(unlearn_bench.Grader, "grade", no_grading)
    assert main([*args, "--methods", "ga", "--seeds", "2"]) == 0  # every row there: nothing retrained or regraded
    assert main([*args, "--people", "12"]) == 2  # other settings in the same folder are refused
    assert "other settings" in capsys.readouterr().err


def target_entry(method, forget, retain, mia):
    """A summary-table entry (mean, std) over three seeds and its per-seed rows with LOSS-attack AUCs `mia`."""
    entry = {"method": method, "seeds": len(mia), "forget_acc": (forget, 0.1), "retain_acc": (retain, 0.1),
             "mia_loss": (sum(mia) / len(mia), 0.1)}
    return entry, [{"method": method, "seed": seed, "mia_loss": auc} for seed, auc in enumerate(mia)]


def targets_of(*entries):
    from forgetune.bench.unlearning import targets_markdown

    return targets_markdown([e for e, _ in entries], [r for _, rows in entries for r in rows])


def test_targets_are_checked_against_the_finetuned_means():
    text = targets_of(target_entry("finetuned", 0.8, 0.8, [0.98, 0.97, 0.99]),
                      target_entry("all", 0.05, 0.75, [0.47, 0.46, 0.48]),
                      target_entry("none", 0.09, 0.71, [0.56, 0.57, 0.56]),
                      target_entry("forget-only", 0.0, 0.2, [0.2, 0.2, 0.2]))
    assert "| all | 3 | FRM |" in text and "| none | 3 | none |" in text and "| forget-only | 3 | F |" in text
    assert "| finetuned |" not in text


def test_mia_target_is_missed_when_any_seed_is_far_from_chance():
    """Seeds at 0.26 / 0.71 / 0.62 average to 0.53 (within 0.05 of 0.5) but every seed's |AUC - 0.5| is 0.12 or
    more: missed, and the per-seed AUCs are in the line."""
    text = targets_of(target_entry("finetuned", 0.8, 0.8, [0.98, 0.97, 0.99]),
                      target_entry("signed", 0.05, 0.75, [0.26, 0.71, 0.62]))
    assert "| signed | 3 | FR | 0.260, 0.710, 0.620 |" in text


def test_mia_target_is_met_when_every_seed_is_close_to_chance():
    """0.48 / 0.53 / 0.55: every seed within 0.05 of 0.5 (0.55 exactly on the boundary counts): met."""
    text = targets_of(target_entry("finetuned", 0.8, 0.8, [0.98, 0.97, 0.99]),
                      target_entry("close", 0.05, 0.75, [0.48, 0.53, 0.55]))
    assert "| close | 3 | FRM | 0.480, 0.530, 0.550 |" in text


@pytest.mark.parametrize(("flag", "expected"), [(None, unlearn_bench.DEFAULT_METHODS),
                                                ("all", tuple(unlearn_bench.METHODS)),
                                                (" npo , ga-stop", ("npo", "ga-stop"))])
def test_methods_default_all_and_named(flag, expected, tmp_path, monkeypatch):
    """No --methods: the seven default rows after the three reference rows; `all`: every registered method."""
    run = []
    monkeypatch.setattr(unlearn_bench, "run_grid", lambda cfg, root, methods, *_: run.extend(methods) or [])
    unlearn_bench.run_unlearn_bench(unlearn_bench.UnlearnBenchConfig(methods=flag, results=str(tmp_path)))
    assert run == ["retain-only", "base", "finetuned", *expected]
    assert set(unlearn_bench.DEFAULT_METHODS) < set(unlearn_bench.METHODS)


def test_unknown_method_is_refused(tmp_path):
    with pytest.raises(ForgetuneError, match="unknown method"):
        unlearn_bench.run_unlearn_bench(unlearn_bench.UnlearnBenchConfig(methods="ga,nope", results=str(tmp_path)))
