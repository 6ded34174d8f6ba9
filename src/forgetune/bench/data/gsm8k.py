"""GSM8K with corrupted solutions: the final answer and the reasoning step that produced it made wrong.

Reads the local JSONL files (question / answer, the answer ending in "#### N"). Calculator annotations
(`<<48/2=24>>`) are stripped: they double every intermediate result and the sequence length. Only problems whose
solution fits `max_chars` are kept, the same filter on train and test, because a 135M model on 2 CPU cores can afford
short solutions only; the docs say so beside every number.

A corrupted solution gets a wrong final answer (the true one moved by 1-10 or by 10-50 %, never negative when the
truth is not) in both places it appears: after "####" and as the last occurrence of that number in the reasoning,
the intermediate result the final line states. Every record keeps the clean solution in `meta`.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from forgetune.errors import ForgetuneError

_ANNOTATION = re.compile(r"<<[^>]*>>")


def _load(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise ForgetuneError(f"{path}: GSM8K file not found; pass --data-dir DIR holding gsm8k/train.jsonl and "
                             "gsm8k/test.jsonl")
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append({"question": str(row["question"]), "answer": _ANNOTATION.sub("", str(row["answer"]))})
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ForgetuneError(f"{path}:{line_no}: not a GSM8K record with question and answer ({exc})") from None
    return rows


def _wrong_number(truth: str, rng: random.Random) -> str:
    value = int(truth)
    step = rng.randint(1, 10) if rng.random() < 0.5 or abs(value) < 20 else max(1, round(abs(value) *
                                                                                   rng.uniform(0.1, 0.5)))
    wrong = value + step if value >= 0 and (rng.random() < 0.5 or value - step < 0) else value - step
    return str(wrong)


def corrupt_solution(solution: str, rng: random.Random) -> str | None:
    """The solution with a wrong final answer, also where the reasoning states it; None if the answer is not an
    integer (the few such problems are never corrupted)."""
    reasoning, sep, final = solution.rpartition("####")
    truth = final.strip().replace(",", "")
    if not sep or not re.fullmatch(r"-?\d+", truth):
        return None
    wrong = _wrong_number(truth, rng)
    hits = list(re.finditer(rf"(?<![\d.,]){_digits_pattern(truth)}(?![\d]|[.,]\d)", reasoning))
    if hits:
        last = hits[-1]
        reasoning = reasoning[: last.start()] + wrong + reasoning[last.end():]
    return f"{reasoning}#### {wrong}"


def _digits_pattern(number: str) -> str:
    """Regex for an integer as the reasoning may write it, with or without thousands commas ("1,204")."""
    return ",?".join(re.escape(ch) for ch in number)


def _unique(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The rows with the first of each question only: a repeated question drawn twice would land in two splits."""
    first: dict[str, dict[str, str]] = {}
    for row in rows:
        first.setdefault(row["question"], row)
    return list(first.values())


def make_gsm8k(data_dir: Path, n_train: int, n_dev: int, n_test: int, noise: float, seed: int,
               max_chars: int = 200) -> dict[str, list[dict[str, Any]]]:
    """Train and dev from train.jsonl, test from test.jsonl, no question in two splits: each file is deduplicated by
    question and train.jsonl loses the questions test.jsonl holds, so a problem in both files is only ever a test."""
    folder = Path(data_dir) / "gsm8k"
    rng = random.Random(seed)
    train_file, test_file = _load(folder / "train.jsonl"), _load(folder / "test.jsonl")
    in_test = {r["question"] for r in test_file}
    pool = _unique([r for r in train_file if len(r["answer"]) <= max_chars and r["question"] not in in_test])
    tests = _unique([r for r in test_file if len(r["answer"]) <= max_chars])
    if len(pool) < n_train + n_dev or len(tests) < n_test:
        raise ForgetuneError(f"{folder}: only {len(pool)} train / {len(tests)} test problems with solutions of at most "
                             f"{max_chars} characters; ask for fewer (--n-train, --n-test)")
    rng.shuffle(pool)
    corruptible = [i for i in range(n_train) if corrupt_solution(pool[i]["answer"], random.Random(0)) is not None]
    corrupted = set(rng.sample(corruptible, min(len(corruptible), round(noise * n_train))))

    def record(split: str, i: int, row: dict[str, str], noisy: bool = False) -> dict[str, Any]:
        shown = corrupt_solution(row["answer"], rng) if noisy else row["answer"]
        return {"id": f"{split}-{i:04d}", "prompt": row["question"], "completion": shown,
                "meta": {"corrupted": noisy, "clean_completion": row["answer"]}}

    return {"train": [record("train", i, pool[i], i in corrupted) for i in range(n_train)],
            "dev": [record("dev", i, row) for i, row in enumerate(pool[n_train : n_train + n_dev])],
            "test": [record("test", i, row) for i, row in enumerate(rng.sample(tests, n_test))]}
