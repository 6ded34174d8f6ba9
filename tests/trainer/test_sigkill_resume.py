"""`forgetune run` killed with SIGKILL during `score`, then during `train`, and rerun: it ends where an uninterrupted
run ends (same scores, same partition, same weights), and the training resumes from its last complete checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from forgetune.bench.data.arith import make_arith
from forgetune.cli import main
from forgetune.io import DONE_MARKER
from forgetune.trainer import ObjectiveTrainer, last_checkpoint
from tests_helpers import write_jsonl

pytestmark = pytest.mark.slow  # a real process, a whole bench or many stages: `pytest -m 'not slow'` skips it

STEPS = 200


def argv(model: Path, data: Path, out: Path) -> list[str]:
    # 120 examples scored one at a time: scoring lasts long enough to be killed in; 200 steps, a checkpoint every 5.
    return [str(a) for a in ["run", "--model", model, "--data", data, "--output", out, "--cross-fit", "1",
                             "--reference-fraction", "0.5", "--reference-max-steps", "2", "--max-steps", STEPS,
                             "--save-steps", "5", "--batch-size", "4", "--score-batch-size", "1", "--logging-steps",
                             "10", "--quiet"]]


def kill_when(args: list[str], ready: Callable[[], bool], cwd: Path) -> None:
    """Start `python -m forgetune ...`, SIGKILL it as soon as `ready()` holds."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}  # in-process tests run on one thread
    with open(cwd / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "forgetune", *args], cwd=cwd, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 240
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"the run ended (code {proc.returncode}) before it could be killed: "
                            f"{(cwd / 'stderr.txt').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("timed out waiting for the moment to kill")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_during_score_and_train_then_rerun(tiny_model_dir, tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "arith.jsonl", make_arith(120, noise=0.25, seed=3))
    base, out = tmp_path / "uninterrupted", tmp_path / "killed"
    assert main(argv(tiny_model_dir, data, base)) == 0

    # 1. killed while scoring: the score folder is being written in its temporary sibling
    kill_when(argv(tiny_model_dir, data, out), lambda: any(out.glob(".score.*.tmp")), tmp_path)
    assert (out / "reference" / DONE_MARKER).is_file()
    assert not (out / "score").exists() and list(out.glob(".score.*.tmp"))  # nothing half-written in place
    reference_done = (out / "reference" / DONE_MARKER).stat().st_mtime_ns

    # 2. the same command, killed once training has written a checkpoint
    checkpoints = out / "train" / "checkpoints"
    kill_when(argv(tiny_model_dir, data, out), lambda: last_checkpoint(checkpoints) is not None, tmp_path)
    assert not list(out.glob(".score.*.tmp"))  # the killed run's temporary was cleared
    assert (out / "score" / DONE_MARKER).is_file() and (out / "partition" / DONE_MARKER).is_file()
    assert not (out / "train" / DONE_MARKER).exists() and not (out / "model").exists()
    resumed = last_checkpoint(checkpoints)
    step = json.loads((resumed / "trainer_state.json").read_text())["global_step"]
    # A kill while a checkpoint is being written leaves it without trainer_state.json: it must be passed over.
    partial = checkpoints / f"checkpoint-{step + 5}"
    partial.mkdir(exist_ok=True)
    (partial / "model.safetensors").write_bytes((resumed / "model.safetensors").read_bytes()[:100])
    (partial / "trainer_state.json").unlink(missing_ok=True)

    # 3. the same command again, to the end: training resumes at `step`
    calls, real = [], ObjectiveTrainer.compute_loss

    def counted(self, *args, **kwargs):
        calls.append(self.state.global_step)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ObjectiveTrainer, "compute_loss", counted)
    assert main(argv(tiny_model_dir, data, out)) == 0
    assert 0 < step < STEPS and calls[0] == step and len(calls) == STEPS - step

    for name in ("score/scores.npy", "score/ce_base.npy", "score/ce_ref.npy", "partition/polarity.npy"):
        assert np.array_equal(np.load(out / name), np.load(base / name)), name
    history = json.loads((out / "train" / "log_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == list(range(10, STEPS + 1, 10))
    got, want = load_file(out / "model" / "model.safetensors"), load_file(base / "model" / "model.safetensors")
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-6, err_msg=key)  # bit-identical on CPU
    assert not checkpoints.exists()
    assert (out / "reference" / DONE_MARKER).stat().st_mtime_ns == reference_done  # never redone
