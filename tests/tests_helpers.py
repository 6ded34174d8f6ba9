"""Small helpers shared by tests (importable because pytest puts tests/ on sys.path via conftest)."""

from __future__ import annotations

import csv
import json
from pathlib import Path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def fake_gsm8k(tmp_path: Path, n: int = 40) -> Path:
    """A data dir with gsm8k/{train,test}.jsonl in the real format (annotations, "#### N")."""
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    for split in ("train", "test"):
        rows = [{"question": f"Tom has {i} apples and buys {i + 2} more. How many now?",
                 "answer": f"He has {i} + {i + 2} = <<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2} apples.\n#### {2 * i + 2}"}
                for i in range(n)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def fake_truthfulqa(tmp_path: Path, n: int = 30) -> Path:
    """A data dir with truthfulqa/TruthfulQA.csv in the real format (BOM, "; "-separated incorrect answers)."""
    folder = tmp_path / "truthfulqa"
    folder.mkdir()
    with (folder / "TruthfulQA.csv").open("w", newline="", encoding="utf-8-sig") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers",
                         "Source"])
        for i in range(n):
            writer.writerow(["Adversarial", "Misc", f"Question {i}?", f"True answer {i}", "x",
                             f"Myth {i} a; Myth {i} b", "src"])
    return tmp_path
