"""`forgetune bench unlearn`: fine-tune on fictitious people, unlearn 10% of them, measure what is left.

Per seed: the base model is fine-tuned on all trained people (`finetuned`) and, as the gold standard of forgetting,
on the retain people only (`retain-only`: a model that never saw the forget set). Every method then unlearns the
forget people from `finetuned` with `forgetune unlearn`. Each row is graded on:

- forget_acc / retain_acc: greedy answers that state the person's attribute (forget people / a retain sample);
  UA = 1 - forget_acc, RA = retain_acc, TA = utility_acc (the seed 003 names);
- utility_acc: capitals of real countries, knowledge none of the training touches;
- forget_loss / retain_loss: mean response NLL;
- forget_quality: KS-test p-value of the forget set's per-example NLL against the retain-only model's (TOFU);
- mia_*: AUROC of membership-inference attacks, forget people (members) vs holdout people (never trained on),
  0.5 = indistinguishable;
- seconds / steps: run time and optimiser steps of the unlearning alone.

A `-stop` method is the same method ended by the stopping rule (`--holdout`): once the forget people are as unlikely
as the seed's calibration people (never trained on, and not the attacks' non-members).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from forgetune import pipeline
from forgetune.bench.data.facts import RELATIONS, load_facts
from forgetune.bench.data.people import make_people
from forgetune.bench.harness import run_grid, write_tables
from forgetune.config import option, resolve
from forgetune.errors import ForgetuneError
from forgetune.io import atomic_path, write_text
from forgetune.rundir import RunDir

log = logging.getLogger(__name__)

# Each method: `forgetune unlearn` flags. "npo-tokens" scores forget tokens against the retain-only model.
METHODS: dict[str, dict[str, Any]] = {
    "ga": {"method": "ga"},
    "graddiff": {"method": "graddiff"},
    "npo": {"method": "npo"},
    "simnpo": {"method": "simnpo"},
    # m_r = -1: the planted retain facts are fitted (training retain NLL ~0.01), see docs/unlearning.md
    "constrained": {"method": "constrained", "forget_loss": "npo", "retain_floor": -1.0},
    "constrained-surgery": {"method": "constrained-surgery", "forget_loss": "npo"},
    "l1sparse": {"method": "l1sparse", "forget_loss": "npo"},
    "prune-npo": {"method": "npo", "prune": 0.2},
    "npo-tokens": {"method": "npo", "tokens": "scored", "token_fraction": 0.5},
    # simnpo kept the most retain accuracy at the fixed budget; three ways to push it past the targets
    "simnpo-r3": {"method": "simnpo", "retain_weight": 3.0},
    "simnpo-tokens": {"method": "simnpo", "tokens": "scored", "token_fraction": 0.5},
    "constrained-simnpo": {"method": "constrained", "forget_loss": "simnpo", "retain_floor": -1.0},
}
CALIBRATION = "calibration"  # replaced by the seed's calibration people file
METHODS.update({f"{name}-stop": {**METHODS[name], "holdout": CALIBRATION}
                for name in ("npo", "constrained", "simnpo", "graddiff", "ga")})
# Methods a bench runs unless told (`--methods all`: every one): open-unlearning's baselines (ga, graddiff, npo,
# simnpo), forgetune's utility-preserving constraint, token-level unlearning with the method it paid off with, and
# the stopping rule. The other rows are variants whose question docs/unlearning.md answers; all seventeen take about
# 70 minutes a seed on 2 CPU cores, these seven fit 30 (docs/performance.md).
DEFAULT_METHODS = ("ga", "graddiff", "npo", "simnpo", "constrained", "simnpo-tokens", "npo-stop")
REFERENCE_ROWS = ("base", "finetuned", "retain-only")
METRICS = ("forget_acc", "retain_acc", "utility_acc", "forget_loss", "retain_loss", "forget_quality", "mia_loss",
           "mia_zlib", "mia_min_k", "mia_min_k_plus_plus", "UA", "RA", "TA", "seconds", "steps")


@dataclass
class UnlearnBenchConfig:
    name: str = option("unlearn", "The unlearning benchmark (fictitious people).")
    seeds: int = option(1, "Seeds (0 .. seeds-1): people, fine-tuning and unlearning all change with the seed.")
    methods: str | None = option(None, f"Comma-separated unlearning methods to compare (default: "
                                 f"{','.join(DEFAULT_METHODS)}; all: every one of {', '.join(METHODS)}).")
    results: str = option("results", "Results root; this benchmark writes results/unlearn/.")
    people: int = option(40, "Trained fictitious people, 5 facts each.")
    forget_fraction: float = option(0.1, "Fraction of the trained people to unlearn.")
    retain_eval: int = option(40, "Retain facts graded per row (a fixed sample).")
    utility_questions: int = option(40, "Capital-city questions graded as utility.")
    model: str | None = option(None, "Local HF model dir (default: the embedded SmolLM2-135M-Instruct).")
    finetune_epochs: float = option(6.0, "Epochs of the fine-tuning that plants the people.")
    finetune_lr: float = option(1e-4, "Learning rate of that fine-tuning.")
    batch_size: int = option(8, "Fine-tuning batch size.")
    unlearn_epochs: float = option(5.0, "Passes over the forget set of every unlearning method.")
    unlearn_lr: float = option(2e-5, "Learning rate of every unlearning method.")
    unlearn_batch_size: int = option(4, "Forget examples per unlearning step (plus as many retain examples).")
    max_steps: int = option(-1, "If > 0, cap every training (smoke runs).")
    max_new_tokens: int = option(20, "Generated tokens per answer.")


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return path


def build_data(cfg: UnlearnBenchConfig, seed: int, out: Path) -> dict[str, Path]:
    """The seed's people splits, the graded retain sample and the capital-city utility set, as JSONL files."""
    splits = make_people(cfg.people, cfg.forget_fraction, seed)
    rng = random.Random(seed)
    splits["retain_eval"] = rng.sample(splits["retain"], min(cfg.retain_eval, len(splits["retain"])))
    capitals = [f for f in load_facts() if f[1] == "capital"]
    question, answer = RELATIONS["capital"]
    splits["utility"] = [
        {"id": f"utility-{i:03d}", "prompt": question.format(country=c),
         "completion": answer.format(country=c, value=v), "meta": {"answer": v}}
        for i, (c, _, v) in enumerate(rng.sample(capitals, min(cfg.utility_questions, len(capitals))))
    ]
    return {name: _write_jsonl(out / f"{name}.jsonl", records) for name, records in splits.items()}


def finetune(cfg: UnlearnBenchConfig, data: Path, out: Path, seed: int) -> Path:
    """Plain SFT from the base (a forgetune run, so an interrupted bench resumes it); returns its model dir."""
    flags = {"model": cfg.model, "data": str(data), "output": str(out), "objective": "sft", "seed": seed,
             "epochs": cfg.finetune_epochs, "learning_rate": cfg.finetune_lr, "batch_size": cfg.batch_size,
             "max_steps": cfg.max_steps}
    run = pipeline.open_run(resolve(flags=flags))
    pipeline.run_all(run)
    return run.layout.model


class Grader:
    """Grades model dirs on one seed's files; holds the retain-only model's forget losses for forget quality."""

    def __init__(self, cfg: UnlearnBenchConfig, files: dict[str, Path]):
        from forgetune.data.formats import load_examples, load_records
        from forgetune.models import load_tokenizer, resolve_model_path

        self.cfg = cfg
        self.tokenizer = load_tokenizer(resolve_model_path(cfg.model))
        self.records = {name: load_records(files[name]) for name in ("forget", "retain_eval", "utility", "holdout")}
        self.examples = {name: load_examples(files[name], self.tokenizer)[0]
                         for name in ("forget", "retain_eval", "holdout")}
        self.never_seen_losses: np.ndarray | None = None

    def _accuracy(self, model, name: str) -> float:
        from forgetune.generation import generate_answers
        from forgetune.metrics.accuracy import exact_match

        records = self.records[name]
        prompts = [[m for m in r.messages if m["role"] != "assistant"] for r in records]
        answers = generate_answers(model, self.tokenizer, prompts, self.cfg.max_new_tokens)
        return exact_match(answers, [r.meta["answer"] for r in records], "contains")

    def grade(self, model_dir: Path, never_seen: bool = False) -> dict[str, float]:
        from forgetune.metrics.mia import example_losses, forget_quality, mia_report, token_stats
        from forgetune.models import load_for_inference

        model = load_for_inference(model_dir)
        pad = self.tokenizer.pad_token_id
        stats = {name: token_stats(model, examples, pad) for name, examples in self.examples.items()}
        texts = {name: [r.messages[-1]["content"] for r in self.records[name]] for name in ("forget", "holdout")}
        forget_losses = example_losses(stats["forget"])
        if never_seen:
            self.never_seen_losses = forget_losses
        row = {"forget_acc": self._accuracy(model, "forget"), "retain_acc": self._accuracy(model, "retain_eval"),
               "utility_acc": self._accuracy(model, "utility"), "forget_loss": float(forget_losses.mean()),
               "retain_loss": float(example_losses(stats["retain_eval"]).mean()),
               **mia_report(stats["forget"], texts["forget"], stats["holdout"], texts["holdout"])}
        if self.never_seen_losses is not None:
            row["forget_quality"] = forget_quality(forget_losses, self.never_seen_losses)
        row.update(UA=1 - row["forget_acc"], RA=row["retain_acc"], TA=row["utility_acc"])
        return row


def run_unlearn_bench(cfg: UnlearnBenchConfig) -> list[dict[str, Any]]:
    from forgetune.models import resolve_model_path
    from forgetune.unlearn import run_unlearn, unlearn_config

    chosen = cfg.methods or ",".join(DEFAULT_METHODS)
    methods = list(METHODS) if chosen.strip() == "all" else [m.strip() for m in chosen.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ForgetuneError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    root = Path(cfg.results) / cfg.name

    def prepare(seed: int, todo: list[str]):
        files = build_data(cfg, seed, root / "data" / f"seed{seed}")
        runs = root / "runs" / f"seed{seed}"
        grader = Grader(cfg, files)
        finetuned = finetune(cfg, files["train"], runs / "finetuned", seed)
        retain_only = finetune(cfg, files["retain"], runs / "retain-only", seed)
        if "retain-only" not in todo:  # graded before: again only for the never-seen losses forget quality reads
            grader.grade(retain_only, never_seen=True)
        models = {"retain-only": retain_only, "base": resolve_model_path(cfg.model), "finetuned": finetuned}

        def run(name: str) -> dict[str, Any]:
            seconds = steps = None
            if name not in models:
                flags = {"model": str(finetuned), "forget": str(files["forget"]), "retain": str(files["retain"]),
                         "output": str(runs / name), "seed": seed, "learning_rate": cfg.unlearn_lr,
                         "epochs": cfg.unlearn_epochs, "batch_size": cfg.unlearn_batch_size,
                         "max_steps": cfg.max_steps, **METHODS[name]}
                if flags.get("tokens") == "scored":
                    flags["token_reference"] = str(retain_only)
                if flags.get("holdout") == CALIBRATION:
                    flags["holdout"] = str(files[CALIBRATION])
                info = run_unlearn(unlearn_config(flags))
                seconds, steps = info["seconds"], info["steps"]
            row = grader.grade(models.get(name, RunDir(runs / name).model), never_seen=name == "retain-only")
            log.info("[unlearn] seed %d: %s forget_acc %.3f retain_acc %.3f", seed, name, row["forget_acc"],
                     row["retain_acc"])
            return {**row, "seconds": seconds, "steps": steps}

        return run

    # retain-only first: it sets the never-seen losses that forget quality compares with
    return run_grid(cfg, root, ["retain-only", "base", "finetuned", *methods], prepare,
                    lambda rows: write_outputs(cfg, root, rows, [*REFERENCE_ROWS, *METHODS]))


def write_outputs(cfg: UnlearnBenchConfig, root: Path, rows: list[dict[str, Any]], methods: list[str]) -> None:
    table = write_tables(cfg, root, rows, methods, METRICS)
    write_text(root / "targets.md", targets_markdown(table, rows))
    plot_tradeoff(table, root / "tradeoff.png")


def targets_met(entry: dict[str, Any], finetuned: dict[str, Any], mia_aucs: list[float]) -> str:
    """The issue's targets against the fine-tuned model: F = forget acc <= 10 % of its value, R = retain acc >= 90 %
    of its value (seed means), M = LOSS-attack AUC within 0.05 of 0.5 on every seed. M is per seed because an
    attack's AUC is signed: 0.26, 0.71 and 0.62 average to 0.53 while every seed's forget set is told apart."""
    checks = {"F": entry["forget_acc"][0] <= 0.1 * finetuned["forget_acc"][0],
              "R": entry["retain_acc"][0] >= 0.9 * finetuned["retain_acc"][0],
              # the tolerance keeps an AUC of exactly 0.45 or 0.55 (e.g. 11/20 pairs) within 0.05 in floating point
              "M": bool(mia_aucs) and all(abs(auc - 0.5) <= 0.05 + 1e-12 for auc in mia_aucs)}
    return "".join(name for name, met in checks.items() if met) or "none"


def targets_markdown(table: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    """targets.md: a line per method with the targets it meets and its LOSS-attack AUC on each seed, by seed."""
    finetuned = next((e for e in table if e["method"] == "finetuned"), None)
    if finetuned is None:
        return "# unlearn targets\n\nNo finetuned row yet.\n"
    lines = ["# unlearn targets", "", "F = forget acc <= 10 % of finetuned's, R = retain acc >= 90 % of finetuned's "
             "(seed means), M = LOSS-attack AUC within 0.05 of 0.5 on every seed.", "",
             "| method | seeds | targets met | LOSS-attack AUC per seed |", "|---|---|---|---|"]
    for e in table:
        if e["method"] in REFERENCE_ROWS:
            continue
        aucs = [r["mia_loss"] for r in sorted(rows, key=lambda r: r["seed"])
                if r["method"] == e["method"] and r.get("mia_loss") is not None]
        lines.append(f"| {e['method']} | {e['seeds']} | {targets_met(e, finetuned, aucs)} | "
                     f"{', '.join(f'{auc:.3f}' for auc in aucs)} |")
    return "\n".join(lines) + "\n"


def plot_tradeoff(table: list[dict[str, Any]], path: Path) -> None:
    """Forget efficacy (1 - forget accuracy) against utility (retain accuracy), mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5))
    for entry in table:
        (ua, ua_std), (ra, ra_std) = entry["UA"], entry["RA"]
        ax.errorbar(100 * ua, 100 * ra, xerr=100 * ua_std, yerr=100 * ra_std, fmt="o", capsize=3)
        ax.annotate(entry["method"], (100 * ua, 100 * ra), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("forget efficacy UA = 1 - forget accuracy (%)")
    ax.set_ylabel("utility RA = retain accuracy (%)")
    ax.set_xlim(-5, 105)
    ax.set_ylim(-5, 105)
    ax.set_title("unlearning: forget efficacy vs utility (mean ± std over seeds)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
