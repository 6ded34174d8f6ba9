"""Divergence guard: a non-finite loss or an exploding negative term stops training with one line (exit 2) before the
step reaches the weights, and the last good checkpoint stays on disk (a rerun resumes from it)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from forgetune.cli import main
from forgetune.config import resolve
from forgetune.io import DONE_MARKER
from forgetune.objectives.sft import SFT
from forgetune.trainer import divergence, last_checkpoint

ARGS = ["--objective", "sft", "--max-steps", "6", "--save-steps", "2", "--batch-size", "4", "--logging-steps", "1",
        "--quiet"]


def counting_sft(monkeypatch, nan_from: int | None = None) -> list[int]:
    """Wrap SFT's loss: count the training micro-batches, and turn the loss into NaN from call `nan_from` on."""
    calls, real = [], SFT.__call__

    def call(self, ce, tokens, progress):
        calls.append(1)
        loss, metrics = real(self, ce, tokens, progress)
        if nan_from is not None and len(calls) >= nan_from:
            loss = loss * float("nan")
        return loss, metrics

    monkeypatch.setattr(SFT, "__call__", call)
    return calls


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tiny_model_dir, arith_jsonl, tmp_path,
                                                                         monkeypatch, capsys):
    out = tmp_path / "run"
    argv = [str(a) for a in ["run", "--model", tiny_model_dir, "--data", arith_jsonl, "--output", out, *ARGS]]
    counting_sft(monkeypatch, nan_from=5)  # steps 1-4 train (checkpoints 2 and 4 are written), step 5 is NaN
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    checkpoint = out / "train" / "checkpoints" / "checkpoint-4"
    assert err == [
        f"forgetune: error: {out / 'train'}: training diverged at step 5: the loss is nan; lower --learning-rate, "
        f"keep --max-grad-norm on, and check the run's score files; the last good checkpoint is kept: {checkpoint}"
    ]
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    weights = load_file(checkpoint / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (out / "model").exists() and not (out / "train" / DONE_MARKER).exists()

    monkeypatch.undo()  # the same command again, without the NaN: it resumes from step 4
    calls = counting_sft(monkeypatch)
    assert main(argv) == 0
    assert len(calls) == 2  # steps 5 and 6 only
    history = json.loads((out / "train" / "log_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4, 5, 6]
    assert not (out / "train" / "checkpoints").exists()  # removed once training finished


@pytest.mark.parametrize(
    ("loss", "neg_term", "bound", "expected"),
    [
        (1.0, None, 100.0, None),  # no negative term (sft, ignore)
        (1.0, -99.0, 100.0, None),
        (1.0, -100.0, 100.0, None),  # the bound itself is allowed
        (1.0, -100.5, 100.0, "the negative term reached -100.5, beyond --max-negative-term 100"),
        (1.0, 150.0, 100.0, "the negative term reached 150"),  # bounded objectives add a positive term
        (1.0, -1e6, None, None),  # --max-negative-term none
        (1.0, float("nan"), 100.0, "the negative term reached nan"),
        (float("nan"), -1.0, 100.0, "the loss is nan"),
        (float("inf"), None, None, "the loss is inf"),
        (float("-inf"), -1.0, 100.0, "the loss is -inf"),
    ],
)
def test_divergence_bound(loss, neg_term, bound, expected):
    metrics = {} if neg_term is None else {"neg_term": neg_term}
    reason = divergence(torch.tensor(loss), metrics, bound)
    assert reason == expected if expected is None else reason.startswith(expected)


def test_max_negative_term_is_a_flag_with_a_default_and_none():
    assert resolve().train.max_negative_term == 100.0
    assert resolve(flags={"max_negative_term": None}).train.max_negative_term is None
    assert resolve(flags={"max_negative_term": 20.0}).train.max_negative_term == 20.0


def test_default_bound_lies_beyond_float32_underflow():
    """The default sits past ~87 nats, where p underflows in float32: a sane run never reaches it."""
    assert resolve().train.max_negative_term > -math.log(torch.finfo(torch.float32).tiny)


def test_last_checkpoint_passes_over_a_partial_one(tmp_path):
    for step, complete in ((5, True), (10, True), (15, False)):  # 15: killed while being written
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-junk").mkdir()
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert last_checkpoint(tmp_path / "none") is None
