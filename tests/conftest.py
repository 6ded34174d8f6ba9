"""Shared fixtures: a committed tiny tokenizer and a tiny random Llama built from a config (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

# The tests never fetch: set before any Hugging Face library is imported (they read these once, at import). The
# library itself leaves the environment alone; the CLI sets the same defaults.
for _flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_flag, "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from tests_helpers import TOKENIZER_DIR, build_tiny_llama, write_jsonl  # noqa: E402, F401 (re-exported to tests)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tiny tensors: one thread avoids 2-core oversubscription that made tiny forwards 10x slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A saved tiny random Llama + tokenizer: a local HF dir like any user model."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_llama(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def arith_jsonl(tmp_path) -> Path:
    from forgetune.bench.data.arith import make_arith

    return write_jsonl(tmp_path / "arith.jsonl", make_arith(24, noise=0.25, seed=3))
