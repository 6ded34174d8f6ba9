"""Small helpers shared by tests and benchmarks/run.py (importable because pytest puts tests/ on sys.path via
conftest). Importing this module changes nothing in the process; conftest's test-wide settings stay in conftest."""

from __future__ import annotations

import csv
import json
from pathlib import Path

TOKENIZER_DIR = Path(__file__).parent / "assets" / "tiny-tokenizer"


def build_tiny_llama(vocab_size: int, seed: int = 0):
    """A 32-wide, 2-layer random Llama (a LlamaForCausalLM) from a config: no download."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def fake_gsm8k(tmp_path: Path, n: int = 40, in_both: int = 0) -> Path:
    """A data dir with gsm8k/{train,test}.jsonl in the real format (annotations, "#### N"), the two files holding
    different problems; `in_both` > 0 also puts that many test problems into train.jsonl, each twice."""
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    train = [{"question": f"Tom has {i} apples and buys {i + 2} more. How many now?",
              "answer": f"He has {i} + {i + 2} = <<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2} apples.\n#### {2 * i + 2}"}
             for i in range(n)]
    test = [{"question": f"Sara has {i + 5} pens and loses 3. How many are left?",
             "answer": f"She has {i + 5} - 3 = <<{i + 5}-3={i + 2}>>{i + 2} pens.\n#### {i + 2}"} for i in range(n)]
    write_jsonl(folder / "train.jsonl", train + 2 * test[:in_both])
    write_jsonl(folder / "test.jsonl", test)
    return tmp_path


def fake_truthfulqa(tmp_path: Path, n: int = 30, repeated: int = 0) -> Path:
    """A data dir with truthfulqa/TruthfulQA.csv in the real format (BOM, "; "-separated incorrect answers);
    `repeated` > 0 asks that many of the questions a second time, with other answers."""
    folder = tmp_path / "truthfulqa"
    folder.mkdir()
    with (folder / "TruthfulQA.csv").open("w", newline="", encoding="utf-8-sig") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers",
                         "Source"])
        rows = [(i, f"True answer {i}") for i in range(n)] + [(i, f"Another answer {i}") for i in range(repeated)]
        for i, best in rows:
            writer.writerow(["Adversarial", "Misc", f"Question {i}?", best, "x", f"Myth {i} a; Myth {i} b", "src"])
    return tmp_path


def assert_disjoint(splits: dict[str, list[dict]], keys: tuple[str, ...] = ("train", "dev", "test")) -> None:
    """Raise, listing them, if prompts appear in two of the splits `keys`; a split's "mc_" twin counts as part of
    it (its questions are that split's prompts), so a held-out question in the training set is caught too."""
    prompts = {key: {r.get("prompt", r.get("question")) for r in [*splits[key], *splits.get(f"mc_{key}", [])]}
               for key in keys}
    overlaps = {f"{a}/{b}": sorted(prompts[a] & prompts[b]) for i, a in enumerate(keys) for b in keys[i + 1:]}
    overlaps = {pair: shared for pair, shared in overlaps.items() if shared}
    if overlaps:
        raise AssertionError(f"prompts in two splits: {overlaps}")
