"""Golden numbers: what every loss computes, step by step, on fixed seeds with the tiny model, recorded before the
losses were refactored onto one protocol (#18) and checked after: a refactor that changes no math changes none of
these. `FORGETUNE_RECORD_GOLDEN=1 pytest tests/package/test_golden_numbers.py` rewrites the file (only when the
math is meant to change: say why in the commit)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from forgetune.cli import main
from forgetune.io import read_json
from tests_helpers import write_jsonl

pytestmark = pytest.mark.slow  # a real process, a whole bench or many stages: `pytest -m 'not slow'` skips it

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "golden_numbers.json"
OBJECTIVES = ["sft", "ignore", "forget", "forget-npo", "forget-unlikelihood", "forget-constrained", "loss-truncation"]
UNLEARN = {method: ["--method", method] for method in
           ("ga", "graddiff", "npo", "simnpo", "constrained", "constrained-surgery", "l1sparse")}
UNLEARN["npo-tokens-scored"] = ["--method", "npo", "--tokens", "scored", "--token-fraction", "0.5"]
UNLEARN["graddiff-pruned"] = ["--method", "graddiff", "--prune", "0.3"]
TIMING = ("runtime", "per_second", "total_flos")
STEPS = ["--max-steps", "3", "--batch-size", "4", "--quiet"]  # unlearning logs every step; run: --logging-steps 1
FORGET = [{"prompt": f"What is the code of agent {i}?", "completion": f"Agent {i} uses code {1000 + 37 * i} red."}
          for i in range(6)]
RETAIN = [{"prompt": f"What is {i} plus {i}?", "completion": f"{i} plus {i} is {2 * i}."} for i in range(6)]


def numbers(history: list[dict]) -> list[dict[str, float]]:
    """The logged numbers of each step (timings left out: they are not computed from the data)."""
    return [{k: v for k, v in entry.items() if isinstance(v, int | float) and not any(t in k for t in TIMING)}
            for entry in history]


def observe(tmp_path: Path, model: Path, arith: Path) -> dict[str, object]:
    seen: dict[str, object] = {}
    run = tmp_path / "run"
    for objective in OBJECTIVES:
        argv = ["run", "--model", model, "--data", arith, "--output", run, "--objective", objective,
                "--cross-fit", "1", "--reference-fraction", "0.5", "--score-batch-size", "5", "--logging-steps", "1",
                *STEPS]
        assert main([str(a) for a in argv]) == 0
        seen[f"objective {objective}"] = numbers(read_json(run / "train" / "log_history.json"))
    scores = np.load(run / "score" / "scores.npy")
    polarity = np.load(run / "partition" / "polarity.npy")
    seen["scores"] = {"sum": float(scores.sum(dtype=np.float64)), "first": [float(s) for s in scores[:8]]}
    seen["polarity"] = {str(p): int((polarity == p).sum()) for p in (-1, 0, 1)}
    forget, retain = write_jsonl(tmp_path / "forget.jsonl", FORGET), write_jsonl(tmp_path / "retain.jsonl", RETAIN)
    for name, flags in UNLEARN.items():
        out = tmp_path / f"unlearn-{name}"
        argv = ["unlearn", "--model", model, "--forget", forget, "--retain", retain, "--output", out, *flags, *STEPS]
        if "scored" in flags:
            argv += ["--token-reference", model]
        assert main([str(a) for a in argv]) == 0
        seen[f"unlearn {name}"] = numbers(read_json(out / "unlearn" / "log_history.json"))
    return seen


def differences(expected, actual, where: str = "") -> list[str]:
    """Every place where `actual` differs from `expected` beyond float noise of another CPU: relative 1e-5, or 1e-5
    absolute, since a loss that is a difference of two ~6-nat terms (graddiff: -6.03 + 5.98) keeps the terms'
    absolute rounding (recorded on an Intel CPU, graddiff's -0.0549312 read -0.0549326 on an AMD EPYC)."""
    if isinstance(expected, dict):
        if set(expected) != set(actual):
            return [f"{where}: keys {sorted(expected)} != {sorted(actual)}"]
        return [d for k in expected for d in differences(expected[k], actual[k], f"{where}/{k}")]
    if isinstance(expected, list):
        if len(expected) != len(actual):
            return [f"{where}: {len(expected)} entries != {len(actual)}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual, strict=True))
                for d in differences(e, a, f"{where}[{i}]")]
    if not math.isclose(expected, actual, rel_tol=1e-5, abs_tol=1e-5):
        return [f"{where}: {expected!r} recorded, {actual!r} now"]
    return []


def test_losses_scores_and_partition_match_the_recorded_numbers(tmp_path, tiny_model_dir, arith_jsonl):
    seen = observe(tmp_path, tiny_model_dir, arith_jsonl)
    if os.environ.get("FORGETUNE_RECORD_GOLDEN"):
        GOLDEN.write_text(json.dumps(seen, indent=1) + "\n")
        pytest.skip(f"recorded {GOLDEN}")
    assert differences(json.loads(GOLDEN.read_text()), seen) == []
