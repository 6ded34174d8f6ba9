"""Benchmarks with ground-truth noise: each writes train (noise labelled in `meta`), dev and clean test files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from forgetune.benchmarks.arith import NOISE_KINDS, make_arith
from forgetune.errors import ForgetuneError
from forgetune.io import write_text

BENCHMARKS = ("arith",)


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return path


def build_benchmark(cfg, seed: int, out_dir: Path) -> dict[str, Any]:
    """Write the seed's train/dev/test files; returns their paths and the answer extraction mode."""
    if cfg.name == "arith":
        if cfg.noise_kind not in NOISE_KINDS:
            raise ForgetuneError(f"unknown --noise-kind {cfg.noise_kind!r}; choose one of {', '.join(NOISE_KINDS)}")
        train = make_arith(cfg.n_train, cfg.noise, seed=seed, id_prefix="train", kind=cfg.noise_kind)
        dev = make_arith(max(cfg.n_test // 2, 1), 0.0, seed=10_000 + seed, id_prefix="dev")
        test = make_arith(cfg.n_test, 0.0, seed=20_000 + seed, id_prefix="test")
        extract = "last-number"
    else:
        raise ForgetuneError(f"unknown benchmark {cfg.name!r}; choose one of {', '.join(BENCHMARKS)}")
    return {"train": _write(out_dir / "train.jsonl", train), "dev": _write(out_dir / "dev.jsonl", dev),
            "test": _write(out_dir / "test.jsonl", test), "extract": extract}
