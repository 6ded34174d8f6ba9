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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgetune.io import DONE_MARKER, read_json, write_json

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
