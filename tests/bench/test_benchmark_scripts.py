"""The GPU script a lent device runs stays runnable: its --smoke mode (a tiny config on the CPU) prints every line
and writes the JSON the docs are made from."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_gpu_script_smoke_prints_every_measurement(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--smoke", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    names = {"scoring_throughput_vs_raw_forward", "forget_step_vs_sft_step",
             "training_peak_memory_chunked_vs_full_logits", "training_step_time_chunked_vs_full_logits",
             "training_tokens_per_s_largest_batch"}
    assert all(f"{name} ratio=" in done.stdout for name in names)
    assert set(json.loads(out.read_text())["results"]) == names
