"""Benchmarks with ground-truth noise: each writes train (noise labelled in `meta`), dev and clean test files.

A benchmark is a `Spec`: how to make its splits for a seed, its default sizes, how its answers are graded and which
metric heads its table. TruthfulQA adds a multiple-choice test run through an lm-evaluation-harness task.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgetune.benchmarks.arith import NOISE_KINDS, make_arith
from forgetune.benchmarks.facts import make_facts
from forgetune.benchmarks.gsm8k import make_gsm8k
from forgetune.benchmarks.truthfulqa import make_truthfulqa
from forgetune.errors import ForgetuneError
from forgetune.io import write_text


def _arith(cfg, seed: int, n_train: int, n_dev: int, n_test: int) -> dict[str, list[dict[str, Any]]]:
    if cfg.noise_kind not in NOISE_KINDS:
        raise ForgetuneError(f"unknown --noise-kind {cfg.noise_kind!r}; choose one of {', '.join(NOISE_KINDS)}")
    return {"train": make_arith(n_train, cfg.noise, seed=seed, id_prefix="train", kind=cfg.noise_kind),
            "dev": make_arith(n_dev, 0.0, seed=10_000 + seed, id_prefix="dev"),
            "test": make_arith(n_test, 0.0, seed=20_000 + seed, id_prefix="test")}


@dataclass(frozen=True)
class Spec:
    make: Callable[..., dict[str, list[dict[str, Any]]]]
    n_train: int
    n_test: int
    max_new_tokens: int
    extract: str
    headline: str = "exact_match"


# Default sizes keep one seed of all methods near 30 minutes on 2 CPU cores with the embedded 135M model.
SPECS = {
    "arith": Spec(_arith, n_train=200, n_test=100, max_new_tokens=24, extract="last-number"),
    "gsm8k": Spec(lambda cfg, seed, *sizes: make_gsm8k(Path(cfg.data_dir), *sizes, cfg.noise, seed),
                  n_train=100, n_test=50, max_new_tokens=128, extract="after-####"),
    "facts": Spec(lambda cfg, seed, *sizes: make_facts(*sizes, cfg.noise, seed),
                  n_train=200, n_test=100, max_new_tokens=24, extract="first-line"),
    "truthfulqa": Spec(lambda cfg, seed, *sizes: make_truthfulqa(Path(cfg.data_dir), *sizes, cfg.noise, seed),
                       n_train=200, n_test=150, max_new_tokens=40, extract="first-line", headline="mc_acc"),
}
BENCHMARKS = tuple(SPECS)


def spec(name: str) -> Spec:
    if name not in SPECS:
        raise ForgetuneError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    return SPECS[name]


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return path


def build_benchmark(cfg, seed: int, out_dir: Path) -> dict[str, Any]:
    """Write the seed's files; returns their paths, the answer extraction and any lm-eval task over them."""
    bench = spec(cfg.name)
    n_train, n_test = cfg.n_train or bench.n_train, cfg.n_test or bench.n_test
    splits = bench.make(cfg, seed, n_train, max(n_test // 2, 1), n_test)
    files: dict[str, Any] = {name: _write(out_dir / f"{name}.jsonl", records) for name, records in splits.items()}
    files["extract"] = bench.extract
    graded = f"mc_{cfg.eval_split}"
    if graded in files:  # multiple choice on the graded split, through an lm-eval task
        from forgetune.lmeval import write_multiple_choice_task

        files["lm_eval_include"] = out_dir / "tasks"
        files["lm_eval_tasks"] = write_multiple_choice_task(files["lm_eval_include"],
                                                            f"{cfg.name}_{graded}_seed{seed}", files[graded])
    return files
