"""Benchmarks with ground-truth noise: each writes train (noise labelled in `meta`), dev and clean test files.

A benchmark is a `Spec`: how to make its splits for a seed, its default sizes, how its answers are graded and which
metric heads its table. TruthfulQA adds a multiple-choice test run through an lm-evaluation-harness task. A benchmark
with a `trusted` split (--trusted N: clean examples disjoint from every other split) adds them to the training file
of every method and writes them apart as the reference's data; `train_clean.jsonl` is the training file with every
answer corrected (the ceiling a detector could reach). Records may carry `meta.slice`: the items the systematic
error touches, so exact match is reported on and off the slice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgetune.bench.data.arith import arith_splits
from forgetune.bench.data.facts import make_facts
from forgetune.bench.data.gsm8k import make_gsm8k
from forgetune.bench.data.truthfulqa import make_truthfulqa
from forgetune.errors import ForgetuneError
from forgetune.io import write_text


def _arith(cfg, seed: int, n_train: int, n_dev: int, n_test: int, n_trusted: int) -> dict[str, list[dict[str, Any]]]:
    sizes = {"train": n_train, "trusted": n_trusted, "dev": n_dev, "test": n_test}
    return arith_splits(sizes, seed, cfg.noise, cfg.noise_kind, cfg.wrong_fraction)


def _numwords(cfg, seed: int, n_train: int, n_dev: int, n_test: int, n_trusted: int
              ) -> dict[str, list[dict[str, Any]]]:
    from forgetune.bench.data.numwords import make_numwords

    return make_numwords(n_train, n_dev, n_test, n_trusted, cfg.wrong_fraction, seed)


@dataclass(frozen=True)
class Spec:
    make: Callable[..., dict[str, list[dict[str, Any]]]]
    n_train: int
    n_test: int
    max_new_tokens: int
    extract: str
    headline: str = "exact_match"
    trusted: bool = False  # make() takes n_trusted and returns a "trusted" split
    # Sampled answers per test prompt graded by exact match. Off where greedy exact match sits at the floor for every
    # method (gsm8k and truthfulqa 0-0.06 with the 135M model): there the samples cost most of an evaluation
    # (gsm8k 4 x 50 prompts x 128 tokens at two temperatures) and read 0-0.05 (docs/performance.md).
    sampled: int = 4


# Default sizes aim at one seed of all methods in about 30 minutes on 2 CPU cores with the embedded 135M model; what
# each takes is measured in docs/performance.md. gsm8k trains on 64 problems (100 until 2026-12-07, 41 minutes: its
# training is compute-bound, ~8.5 s a step; `--n-train 100` is docs/results.md section 8's setting), truthfulqa on 160
# questions (200 until 2026-12-07: 32.4 minutes on that day's slower 2-core machine, 28.5 on 2026-12-02's; its test
# questions follow the training ones, so `--n-train 200` is docs/results.md section 4's setting, test set included),
# numwords on 200 numbers and tests on 200 (400 and 400 until 2026-12-07: at least 41 minutes; `--n-train 400 --n-test
# 400` is docs/results.md section 0.2's setting: its test numbers are drawn after the training ones).
SPECS = {
    "arith": Spec(_arith, n_train=200, n_test=100, max_new_tokens=24, extract="last-number", trusted=True),
    "numwords": Spec(_numwords, n_train=200, n_test=200, max_new_tokens=24, extract="first-line", trusted=True),
    "gsm8k": Spec(lambda cfg, seed, *sizes: make_gsm8k(Path(cfg.data_dir), *sizes, cfg.noise, seed),
                  n_train=64, n_test=50, max_new_tokens=128, extract="after-####", sampled=0),
    "facts": Spec(lambda cfg, seed, *sizes: make_facts(*sizes, cfg.noise, seed),
                  n_train=200, n_test=100, max_new_tokens=24, extract="first-line"),
    "truthfulqa": Spec(lambda cfg, seed, *sizes: make_truthfulqa(Path(cfg.data_dir), *sizes, cfg.noise, seed),
                       n_train=160, n_test=150, max_new_tokens=40, extract="first-line", headline="mc_acc",
                       sampled=0),
}
BENCHMARKS = tuple(SPECS)


def spec(name: str) -> Spec:
    if name not in SPECS:
        raise ForgetuneError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    return SPECS[name]


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return path


def _corrected(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "completion": record["meta"].get("clean_completion", record["completion"]),
            "meta": {**record["meta"], "corrupted": False}}


def split_sizes(n_train: int, n_test: int) -> tuple[int, int, int]:
    """(train, dev, test) sizes of a benchmark's splits: the dev split is half the test split."""
    return n_train, max(n_test // 2, 1), n_test


def build_benchmark(cfg, seed: int, out_dir: Path) -> dict[str, Any]:
    """Write the seed's files; returns their paths, the answer extraction and any lm-eval task over them."""
    bench = spec(cfg.name)
    n_train, n_test = cfg.n_train or bench.n_train, cfg.n_test or bench.n_test
    n_trusted = getattr(cfg, "trusted", 0)
    if n_trusted and not bench.trusted:
        trusted_ones = ", ".join(name for name, s in SPECS.items() if s.trusted)
        raise ForgetuneError(f"--trusted: the {cfg.name} benchmark has no trusted split; use one of {trusted_ones}")
    sizes = split_sizes(n_train, n_test)
    splits = bench.make(cfg, seed, *sizes, n_trusted) if bench.trusted else bench.make(cfg, seed, *sizes)
    trusted = [{**r, "meta": {**r["meta"], "trusted": True}} for r in splits.pop("trusted", [])]
    if trusted:
        splits["train"] = splits["train"] + trusted  # every method trains on them, SFT included
        splits["trusted"] = trusted
    splits["train_clean"] = [_corrected(r) for r in splits["train"]]
    files: dict[str, Any] = {name: _write(out_dir / f"{name}.jsonl", records) for name, records in splits.items()}
    files["extract"] = bench.extract
    graded = f"mc_{cfg.eval_split}"
    if graded in files:  # multiple choice on the graded split, through an lm-eval task
        from forgetune.lmeval import write_multiple_choice_task

        files["lm_eval_include"] = out_dir / "tasks"
        files["lm_eval_tasks"] = write_multiple_choice_task(files["lm_eval_include"],
                                                            f"{cfg.name}_{graded}_seed{seed}", files[graded])
    return files
