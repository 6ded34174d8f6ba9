"""The run directory's layout, owned here alone: every other module asks a `RunDir` for a path instead of spelling it.

Layout::

    config.yaml             the resolved config of the last command that ran a stage (generate, eval and report
                            only read it)
    reference/              plan.json, model-K/ (one HF dir or LoRA adapter per reference, deleted once scored
                            unless keep_references), .done.json
    score/                  ce_base.npy, ce_ref.npy, scores.npy (float32, flat, corpus order), offsets.npy, ids.json
    partition/              polarity.npy (int8: +1 positive, -1 negative, 0 ignored), .done.json
    train/                  log_history.json, .done.json (checkpoints/ while running; tensorboard/ with
                            --report-to tensorboard)
    unlearn/                the same, for a run made by `forgetune unlearn` (instead of the four stages above)
    model/                  the trained (or unlearned) model, a Hugging Face dir
    summary.json            token counts, losses, lambda, stage timings
    generations.jsonl       `forgetune generate`'s answers
    eval.json               `forgetune eval RUN`'s metrics
    report.html             `forgetune report RUN`'s page
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgetune.io import DONE_MARKER, mark_done, read_json, stage_done, write_json

log = logging.getLogger(__name__)

STAGES = ("reference", "score", "partition", "train")  # forgetune run's, in order
RECORDED_STAGES = (*STAGES, "unlearn")  # every stage whose record summary.json holds


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def model(self) -> Path:
        return self.path / "model"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def generations(self) -> Path:
        return self.path / "generations.jsonl"

    @property
    def eval_report(self) -> Path:
        return self.path / "eval.json"

    @property
    def report_page(self) -> Path:
        return self.path / "report.html"

    def stage(self, name: str) -> Path:
        return self.path / name

    def log_history(self, stage: str) -> Path:
        return self.stage(stage) / "log_history.json"

    def scores(self, name: str = "scores") -> Path:
        """A flat per-token array of the score stage: scores, ce_base or ce_ref."""
        return self.stage("score") / f"{name}.npy"

    @property
    def polarity(self) -> Path:
        return self.stage("partition") / "polarity.npy"

    def is_run(self) -> bool:
        """A finished run: its config and a model (what eval reads)."""
        return self.config.is_file() and self.model.is_dir()

    def training_log(self) -> Path:
        """The losses of whichever stage trained the model: train/, or unlearn/ for an unlearning run."""
        return next((p for p in map(self.log_history, ("train", "unlearn")) if p.is_file()), self.log_history("train"))

    def write_summary(self, data_counts: dict[str, int]) -> dict[str, Any]:
        """summary.json: the corpus counts and every finished stage's record (timings, token counts, losses)."""
        summary: dict[str, Any] = {"data": data_counts, "stages": {}}
        for stage in RECORDED_STAGES:
            marker = self.stage(stage) / DONE_MARKER
            if marker.is_file():
                info = read_json(marker)
                info.pop("key", None)
                summary["stages"][stage] = info
        write_json(self.summary, summary)
        return summary

    def begin(self, stage: str, key: str, redo: bool = False) -> dict[str, Any] | None:
        """The stage's record when it is up to date under `key` (and not to be redone), else None after logging its
        start and removing its old record: an interrupted stage never leaves a claim of being done behind."""
        from forgetune.processes import process_state

        marker, state = self.stage(stage) / DONE_MARKER, process_state()
        done = stage_done(self.stage(stage), key) and not redo
        state.wait_for_everyone()  # every process has decided before the main one touches the marker
        if done:
            log.info("%s: up to date, skipped", stage)
            return read_json(marker)
        log.info("%s: starting", stage)
        if state.is_main_process:
            marker.unlink(missing_ok=True)
        return None

    def finish(self, stage: str, key: str, started: float, data_counts: dict[str, int],
               **info: Any) -> dict[str, Any]:
        """Record a finished stage and refresh summary.json (the main process writes); every process waits for the
        record before going on."""
        from forgetune.processes import process_state

        info = {"seconds": round(time.time() - started, 2), **info}
        state = process_state()
        if state.is_main_process:
            mark_done(self.stage(stage), key, **info)
            self.write_summary(data_counts)
        state.wait_for_everyone()
        log.info("%s: done in %.1f s%s", stage, info["seconds"],
                 f" ({format_info(info, skip=('seconds',))})" if len(info) > 1 else "")
        return info


def format_info(info: dict[str, Any], skip: tuple[str, ...] = ("key",)) -> str:
    """A stage record as `k=v, ...`, floats to 4 significant digits (the full values stay in summary.json)."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items() if k not in skip)
