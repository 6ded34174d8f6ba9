"""`forgetune bench NAME`: methods x seeds on a benchmark with ground-truth noise; tables, JSON, CSV and plots.

Each seed gets its own data (train with labelled noise, dev, clean test). Methods that share a reference setting share
its reference, scores and partition (hard-linked between run dirs, keyed by content hash), so a method costs one
training.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from forgetune import pipeline
from forgetune.bench.data import BENCHMARKS, build_benchmark, spec
from forgetune.bench.harness import run_grid, versus, write_tables
from forgetune.bench.targets import targets_markdown
from forgetune.config import RunConfig, apply_overrides, option, resolve
from forgetune.errors import ForgetuneError
from forgetune.evaluate import EvalConfig, evaluate
from forgetune.io import atomic_path, write_text
from forgetune.metrics.detection import corrupted_tokens
from forgetune.rundir import RunDir

log = logging.getLogger(__name__)

# Each method: flags over the benchmark's base flags. "base" evaluates the untrained model. "data" names the bench
# file a method trains on instead of the (noisy) train file: trusted (the trusted set alone) or train_clean (every
# answer corrected: the ceiling of any detector).
METHODS: dict[str, dict[str, Any] | None] = {
    "base": None,
    "sft": {"objective": "sft"},
    "sft-trusted": {"objective": "sft", "data": "trusted"},
    "clean-sft": {"objective": "sft", "data": "train_clean"},
    # negatives = exactly the corrupted tokens: how much any detector-based method could gain
    "oracle-ignore": {"objective": "ignore", "rank_by": "labels"},
    "oracle-forget": {"rank_by": "labels", "objective": "forget-npo"},
    # drop whole examples the reference flags, then SFT: token level has to beat example level to justify itself
    "filter": {"objective": "ignore", "rank_by": "reference", "negative_below": -2.3, "unit": "example"},
    "loss-truncation": {"objective": "loss-truncation"},  # reference-free: drop each batch's highest-loss tokens
    "ignore": {"objective": "ignore", "negative_below": None},  # the paper's ignore: drop every non-positive token
    "paper": {"preset": "paper"},
    "forget-3way": {"objective": "forget", "neutral": "ignore", "negative_mean": "negatives"},
    "unlikelihood": {"objective": "forget-unlikelihood"},
    "default": {},  # the library's defaults (with --trusted: those of --reference-data, see config.py)
    # the defaults without a trusted file, spelt out: forget-npo, three-way split of CE_base - CE_ref at 0
    "difference": {"rank_by": "difference", "negative_below": 0.0, "objective": "forget-npo"},
    # rank by the reference's own CE: forget / drop only tokens it gives p < 0.1 (docs/results.md, section 6)
    "default-ref": {"rank_by": "reference", "negative_below": -2.3, "objective": "forget-npo"},
    "ignore-ref": {"objective": "ignore", "rank_by": "reference", "negative_below": -2.3},
}
# Methods a bench runs unless told: without a trusted set, and with one (--trusted N). Without one, the rows that
# answer "does forgetting beat SFT here, and how much could it": the start, the baseline, the strongest
# reference-free baseline, the two ceilings (corrected answers, a perfect detector), the paper, the claim. The
# variants (ignore, forget-3way, unlikelihood, oracle-forget, default-ref, ignore-ref) are ablations whose question
# docs/results.md answers (none beat SFT without a trusted set); --methods names them. Seven rows keep one seed of a
# default bench near 30 minutes on 2 CPU cores (docs/performance.md).
DEFAULT_METHODS = ("base", "sft", "clean-sft", "oracle-ignore", "loss-truncation", "paper", "default")
# With a trusted set `default` is ignore-ref (docs/results.md section 0), so ignore-ref is not run twice.
TRUSTED_METHODS = ("base", "sft", "sft-trusted", "clean-sft", "oracle-ignore", "oracle-forget", "filter",
                   "loss-truncation", "paper", "difference", "default", "default-ref")
METRICS = ("exact_match", "exact_match_slice", "exact_match_off_slice", "mc_acc", "clean_nll", "sampled_em_t1",
           "sampled_em_t0.7", "memorised_noise", "distinct_1", "distinct_2", "self_bleu", "perplexity",
           "token_auroc", "example_auroc_min", "token_precision", "token_recall")


@dataclass
class BenchConfig:
    name: str = option(None, f"Benchmark: {', '.join(BENCHMARKS)}; or unlearn (its flags: forgetune bench unlearn -h).")
    seeds: int = option(1, "Seeds (0 .. seeds-1): data, reference folds and training all change with the seed.")
    methods: str | None = option(None, "Comma-separated methods to compare (default: the list for --trusted 0 or N, "
                                 "see docs/results.md); NAME:KEY=VALUE:... adds training settings to a method, for "
                                 f"tuning (e.g. default:lambda_max=0.5:rho=0.5). All: {', '.join(METHODS)}.")
    results: str = option("results", "Results root; this benchmark writes results/NAME/.")
    n_train: int | None = option(None, "Training examples (default: the benchmark's own, see docs/results.md).")
    n_test: int | None = option(None, "Clean test questions (default: the benchmark's own).")
    noise: float = option(0.3, "Fraction of corrupted training examples.")
    noise_kind: str = option("random", "arith only: random or systematic.")
    wrong_fraction: float = option(0.7, "Systematic noise (arith --noise-kind systematic, numwords): the fraction of "
                                   "the slice's training items that follow the wrong rule; the rest stay correct.")
    trusted: int = option(0, "N > 0: N clean examples, disjoint from every split, added to every method's training "
                          "data and used alone to train the reference (arith, numwords).")
    trusted_epochs: float = option(6.0, "With --trusted: epochs of the reference on the trusted set.")
    eval_split: str = option("test", "Split the methods are graded on: test, or dev to tune settings (never on test).")
    data_dir: str = option("../shared/data", "gsm8k and truthfulqa: folder holding gsm8k/ and truthfulqa/.")
    model: str | None = option(None, "Local HF model dir (default: the embedded SmolLM2-135M-Instruct).")
    epochs: float = option(2.0, "Training epochs of every method and reference.")
    batch_size: int = option(8, "Training batch size.")
    learning_rate: float = option(5e-5, "Learning rate of every method.")
    max_steps: int = option(-1, "If > 0, cap every training (smoke runs).")
    max_new_tokens: int | None = option(None, "Generated tokens per answer (default: the benchmark's own).")
    samples: int = option(5, "Sampled answers per prompt for diversity.")
    sampled: int | None = option(None, "Sampled answers per prompt graded by exact match, at temperatures 1.0 and "
                                 "0.7 (default: the benchmark's own: 4; 0, off, on gsm8k and truthfulqa).")
    sampled_prompts: int = option(50, "Test prompts (the first ones) whose sampled answers are graded.")
    eval_batch_size: int = option(64, "Prompts per generation batch (64 generates twice as fast as 16 on 2 CPUs).")
    diversity_prompts: int = option(10, "Prompts sampled for diversity.")


def method_flags(method: str) -> dict[str, Any] | None:
    """A method's training flags: a registered method, optionally with settings after colons
    ("default:lambda_max=0.5:rho=0.5"). The settings win over the method's own, so a tuned variant is one row of the
    same bench, sharing its data, its base and sft rows and (when the reference settings match) its reference."""
    name, *settings = method.split(":")
    if "/" in method:  # the method names its run folder
        raise ForgetuneError(f"method {method!r}: no '/' in a method; put a file it needs in the working directory")
    if name not in METHODS:
        raise ForgetuneError(f"unknown method {name!r}; choose from {', '.join(METHODS)} "
                             "(NAME:KEY=VALUE adds a setting)")
    if not settings:
        return METHODS[name]
    if METHODS[name] is None:
        raise ForgetuneError(f"method {method!r}: {name} trains nothing, so it takes no settings")
    extra: dict[str, Any] = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key:
            raise ForgetuneError(f"method {method!r}: {setting!r} is not KEY=VALUE; e.g. default:lambda_max=0.5")
        extra[key.replace("-", "_")] = None if value.lower() in ("none", "null") else yaml.safe_load(value)
    apply_overrides(RunConfig(), extra, f"method {method!r}")  # a typo fails now, not after the other methods
    return {**METHODS[name], **extra}


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(src, dst)


def _donate(run: pipeline.Run, donors: list[Path]) -> None:
    """Copy the upstream stages this run needs from sibling runs (any method of the seed, from this bench or an
    earlier one in the folder) with the same content hash: same result, no recompute. Each copy lands atomically, so an
    interrupted bench never sees a half-copied stage as done. Files are hard-linked where the file system allows (every
    stage file is written whole, through a temporary, never edited in place): full copies of the reference's weights
    in each method's folder once filled a disk."""
    from forgetune.io import stage_done

    if not run.objective().needs_partition:
        return
    keys = {"reference": run.reference_key(), "score": run.score_key(), "partition": run.partition_key()}
    for stage, key in keys.items():
        if stage_done(run.stage_dir(stage), key):
            continue
        donor = next((d / stage for d in donors if stage_done(d / stage, key)), None)
        if donor is not None:
            with atomic_path(run.stage_dir(stage), is_dir=True) as tmp:
                shutil.copytree(donor, tmp, dirs_exist_ok=True, copy_function=_link_or_copy)


def run_bench(cfg: BenchConfig) -> list[dict[str, Any]]:
    bench = spec(cfg.name)
    cfg = replace(cfg, n_train=cfg.n_train or bench.n_train, n_test=cfg.n_test or bench.n_test,
                  max_new_tokens=cfg.max_new_tokens or bench.max_new_tokens,  # saved resolved, compared on resume
                  sampled=bench.sampled if cfg.sampled is None else cfg.sampled)
    chosen = cfg.methods or ",".join(TRUSTED_METHODS if cfg.trusted else DEFAULT_METHODS)
    methods = [m.strip() for m in chosen.split(",") if m.strip()]
    flags_of = {method: method_flags(method) for method in methods}
    if not cfg.trusted and any(f and f.get("data") == "trusted" for f in flags_of.values()):
        raise ForgetuneError("method sft-trusted needs a trusted set: pass --trusted N")
    if cfg.eval_split not in ("test", "dev"):
        raise ForgetuneError(f"unknown --eval-split {cfg.eval_split!r}; choose test or dev")
    root = Path(cfg.results) / cfg.name

    def prepare(seed: int, todo: list[str]):
        files = build_benchmark(cfg, seed, root / "data" / f"seed{seed}")
        return lambda method: run_method(cfg, bench, files, root / "runs" / f"seed{seed}", seed, method,
                                         flags_of[method])

    return run_grid(cfg, root, methods, prepare, lambda rows: write_outputs(cfg, root, rows, methods))


def run_method(cfg: BenchConfig, bench: Any, files: dict[str, Any], runs: Path, seed: int, method: str,
               flags: dict[str, Any] | None) -> dict[str, Any]:
    """Train one method of one seed (`flags` None: the base model as it is) and grade it on the eval split."""
    run_dir = runs / method
    eval_cfg = EvalConfig(data=str(files[cfg.eval_split]), extract=files["extract"], samples=cfg.samples,
                          diversity_prompts=cfg.diversity_prompts, seed=seed, sampled=cfg.sampled,
                          sampled_prompts=cfg.sampled_prompts, batch_size=cfg.eval_batch_size,
                          max_new_tokens=cfg.max_new_tokens, lm_eval_tasks=files.get("lm_eval_tasks"),
                          lm_eval_include=str(files["lm_eval_include"]) if "lm_eval_include" in files else None)
    if flags is None:
        base_dir = pipeline.resolve_model_path(cfg.model)
        eval_cfg.target, eval_cfg.report = str(base_dir), str(RunDir(run_dir).eval_report)
    else:
        settings = dict(flags)
        flags = {"model": cfg.model, "data": str(files[settings.pop("data", "train")]), "output": str(run_dir),
                 "seed": seed, "epochs": cfg.epochs, "reference_epochs": cfg.epochs, "batch_size": cfg.batch_size,
                 "learning_rate": cfg.learning_rate, "max_steps": cfg.max_steps, **settings}
        if cfg.trusted:  # every reference is the trusted set's (the paper's setting)
            flags.update(reference_data=str(files["trusted"]), reference_epochs=cfg.trusted_epochs)
        run = pipeline.open_run(resolve(flags=flags))
        _donate(run, sorted(d for d in runs.iterdir() if d.is_dir() and d != run_dir))
        pipeline.run_all(run)
        eval_cfg.target = str(run_dir)
    results = evaluate(eval_cfg)
    if "lm_eval_tasks" in files:
        results["mc_acc"] = results["lm_eval"][files["lm_eval_tasks"]]["acc"]
    log.info("[%s] seed %d: %s %s %.3f", cfg.name, seed, method, bench.headline, results[bench.headline])
    return {**{k: results.get(k) for k in METRICS}, "hits": results.get("hits")}


def write_outputs(cfg: BenchConfig, root: Path, rows: list[dict[str, Any]], methods: list[str]) -> None:
    table = write_tables(cfg, root, rows, methods, METRICS)
    if cfg.trusted:
        write_text(root / "targets.md", targets_markdown(cfg.name, rows, table, versus, TRUSTED_METHODS))
    plot_accuracy(table, root / "accuracy.png", cfg.name, spec(cfg.name).headline)
    histogram = next((root / "runs" / "seed0" / m for m in ("default", *methods)
                      if RunDir(root / "runs" / "seed0" / m).scores().is_file()), None)
    if histogram is not None:
        plot_score_histogram(histogram, root / "scores.png")


def plot_accuracy(table: list[dict[str, Any]], path: Path, title: str, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [e["method"] for e in table]
    means = [100 * e[metric][0] for e in table]
    stds = [100 * e[metric][1] for e in table]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names)), 4))
    ax.bar(names, means, yerr=stds, capsize=4, color="#4C72B0")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{title}: accuracy per method (mean ± std over seeds)")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def plot_score_histogram(run_dir: Path, path: Path) -> None:
    """Scores of clean vs corrupted tokens: how separable the noise is for this reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = pipeline.reopen(run_dir)
    scores = pipeline.ranked_values(run)
    corrupted, _ = corrupted_tokens(run.tokenizer, run.examples)
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(np.percentile(scores, 0.5), np.percentile(scores, 99.5), 50)
    ax.hist(scores[~corrupted], bins=bins, alpha=0.6, density=True, label=f"clean tokens ({(~corrupted).sum()})")
    ax.hist(scores[corrupted], bins=bins, alpha=0.6, density=True, label=f"corrupted tokens ({corrupted.sum()})")
    ax.set_xlabel("−CE_ref" if run.cfg.partition.rank_by == "reference" else "score = CE_base − CE_ref")
    ax.set_ylabel("density")
    ax.legend()
    ax.set_title(f"token scores ({run_dir.name}, {run.cfg.reference.cross_fit}-fold reference)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
