"""Data parallel on CPU: `accelerate launch --num_processes 2` (gloo) scores and trains like one process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from forgetune.cli import main

pytestmark = pytest.mark.slow  # a real process, a whole bench or many stages: `pytest -m 'not slow'` skips it

ACCELERATE = Path(sys.executable).with_name("accelerate")
# The global batch is 8 in both runs: 1 process x 8, or 2 processes x 4 (accelerate hands each process every
# second batch of 4 from the same shuffled order, so the same 8 examples meet in each step).
COMMON = ["--max-steps", "4", "--logging-steps", "1", "--score-batch-size", "5", "--cross-fit", "2",
          "--save-steps", "0", "--quiet"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log(out: Path) -> list[dict]:
    return [h for h in json.loads((out / "train" / "log_history.json").read_text()) if "loss" in h]


@pytest.mark.skipif(not ACCELERATE.is_file(), reason="the accelerate launcher is not installed next to python")
def test_two_processes_score_partition_and_train_like_one(tiny_model_dir, arith_jsonl, tmp_path):
    from forgetune.bench.data.arith import held_out
    from tests_helpers import write_jsonl

    held = write_jsonl(tmp_path / "held.jsonl", held_out(6, seed=3, train=[]))  # evaluated across both processes
    data = ["--model", str(tiny_model_dir), "--data", str(arith_jsonl), *COMMON, "--eval-data", str(held),
            "--eval-steps", "2"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["run", *data, "--output", str(one), "--batch-size", "8", "--keep-references"]) == 0
    # Both score the same reference models (kept for this copy: by default they are deleted once scored): the
    # two-process run finds them up to date (same global batch) and goes on with score, partition and train. (A
    # reference trained under DDP differs from a one-process one by the loss weighting below, so its scores could not
    # be compared to 1e-6.)
    shutil.copytree(one / "reference", two / "reference")
    launch = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
              "-m", "forgetune", "run", *data, "--output", str(two), "--batch-size", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    for name in ("ce_base", "ce_ref", "scores"):
        a, b = np.load(one / "score" / f"{name}.npy"), np.load(two / "score" / f"{name}.npy")
        assert a.shape == b.shape and np.abs(a - b).max() <= 1e-6, name
    assert np.array_equal(np.load(one / "partition" / "polarity.npy"), np.load(two / "partition" / "polarity.npy"))
    # Training: same steps, same examples per step; the losses differ only because each process averages over its
    # own tokens before the gradients are averaged (a token-count weighting): how far apart depends on how unevenly
    # the tokens split between the processes (2e-4 relative on the fixture's earlier data, 2.8e-3 on today's).
    log_one, log_two = _log(one), _log(two)
    assert [h["step"] for h in log_one] == [h["step"] for h in log_two] == [1, 2, 3, 4]
    for a, b in zip(log_one, log_two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=5e-3), (a, b)
    evals_one, evals_two = ([(h["step"], h["eval_loss"]) for h in json.loads((out / "train" / "log_history.json"
                                                                              ).read_text()) if "eval_loss" in h]
                            for out in (one, two))
    assert [s for s, _ in evals_one] == [s for s, _ in evals_two] == [2, 4]
    for (_, a), (_, b) in zip(evals_one, evals_two, strict=True):
        assert b == pytest.approx(a, rel=5e-3)  # the held-out CE of models trained alike (see the losses above)
    assert (two / "model" / "config.json").is_file()
    stages = json.loads((two / "summary.json").read_text())["stages"]
    assert stages["train"]["steps"] == 4 and stages["reference"]["mode"] == "cross_fit=2"


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_zero3"])
def test_shipped_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(Path(__file__).parents[2] / "examples" / "accelerate" / f"{name}.yaml"))
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero3": "DEEPSPEED"}[name]
    assert str(config.distributed_type).endswith(expected) and config.num_processes == 8
