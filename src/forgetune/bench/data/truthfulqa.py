"""TruthfulQA as noisy SFT: train on answers to part of the questions, a fraction of them common misconceptions.

A clean training answer is the question's Best Answer; a corrupted one is drawn from its Incorrect Answers, the
misconceptions people actually hold, which is the kind of noise a scraped SFT set contains. Held-out questions are
evaluated as multiple choice (Best Answer vs the Incorrect Answers, by log-likelihood, through an
lm-evaluation-harness task written over a local JSONL) and, for diversity and perplexity, by generation.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

from forgetune.errors import ForgetuneError

COLUMNS = ("Question", "Best Answer", "Incorrect Answers")


def load_truthfulqa(path: Path) -> list[dict[str, Any]]:
    """The usable rows, the first of each question only: a repeated question could be drawn into two splits."""
    if not path.is_file():
        raise ForgetuneError(f"{path}: TruthfulQA CSV not found; pass --data-dir DIR holding truthfulqa/TruthfulQA.csv")
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ForgetuneError(f"{path}: missing column(s) {', '.join(missing)}; expected the TruthfulQA CSV")
        rows, seen = [], set()
        for row in reader:
            question = row["Question"].strip()
            incorrect = [a.strip() for a in row["Incorrect Answers"].split(";") if a.strip()]
            if question and question not in seen and row["Best Answer"].strip() and incorrect:
                seen.add(question)
                rows.append({"question": question, "best": row["Best Answer"].strip(), "incorrect": incorrect})
    return rows


def make_truthfulqa(data_dir: Path, n_train: int, n_dev: int, n_test: int, noise: float,
                    seed: int) -> dict[str, list[dict[str, Any]]]:
    rows = load_truthfulqa(Path(data_dir) / "truthfulqa" / "TruthfulQA.csv")
    if n_train + n_dev + n_test > len(rows):
        raise ForgetuneError(f"only {len(rows)} TruthfulQA questions; ask for fewer (--n-train, --n-test)")
    rng = random.Random(seed)
    rng.shuffle(rows)
    corrupted = set(rng.sample(range(n_train), round(noise * n_train)))

    def record(split: str, i: int, row: dict[str, Any], noisy: bool = False) -> dict[str, Any]:
        shown = rng.choice(row["incorrect"]) if noisy else row["best"]
        return {"id": f"{split}-{i:04d}", "prompt": row["question"], "completion": shown,
                "meta": {"corrupted": noisy, "clean_completion": row["best"]}}

    dev_end = n_train + n_dev
    held_out = {"dev": rows[n_train:dev_end], "test": rows[dev_end : dev_end + n_test]}
    splits = {"train": [record("train", i, row, i in corrupted) for i, row in enumerate(rows[:n_train])]}
    for split, chosen in held_out.items():
        splits[split] = [record(split, i, row) for i, row in enumerate(chosen)]
        splits[f"mc_{split}"] = [{"question": row["question"], "choices": [row["best"], *row["incorrect"]],
                                  "label": 0} for row in chosen]
    return splits
