"""`forgetune eval RUN_OR_MODEL --data TEST`: accuracy, perplexity, diversity, memorised noise, noise detection.

Run-based metrics (memorised noise, detection) need a run directory whose training data carries ground truth:
records with ``meta.corrupted`` and ``meta.clean_completion`` (the benchmarks write them). With
``--lm-eval-tasks`` the model also runs lm-evaluation-harness tasks (the optional `lmeval` extra); ``--data`` is then
optional.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from forgetune.config import option
from forgetune.data.collator import response_positions
from forgetune.data.corpus import example_offsets
from forgetune.data.formats import load_records, tokenize_records
from forgetune.errors import ForgetuneError
from forgetune.generation import generate_answers
from forgetune.io import write_json
from forgetune.metrics.accuracy import MODES, exact_match, extract_answer, last_number
from forgetune.metrics.detection import corrupted_tokens, detection_auroc, example_scores, precision_recall
from forgetune.metrics.diversity import distinct_n, self_bleu
from forgetune.metrics.memorisation import memorised_noise
from forgetune.metrics.perplexity import perplexity
from forgetune.models import load_for_inference, load_tokenizer
from forgetune.rundir import RunDir
from forgetune.scoring.partition import IGNORED, NEGATIVE
from forgetune.scoring.scorer import token_ce

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    target: str = option(None, "A run directory (its model/) or a Hugging Face model directory.")
    data: str | None = option(None, "Test file: prompts with reference answers (any forgetune data format).")
    extract: str = option(
        "auto", f"Answer extraction: auto (from the reference answers: after-#### when they all hold '####', "
        f"last-number when they all hold a number, else first-line), {', '.join(MODES)}."
    )
    samples: int = option(5, "Sampled answers per prompt (temperature 1) for diversity; 0 skips diversity.")
    diversity_prompts: int = option(20, "How many test prompts to sample for diversity.")
    max_new_tokens: int = option(64, "Tokens to generate per answer.")
    batch_size: int = option(16, "Prompts per generation batch (and per lm-eval batch).")
    seed: int = option(0, "Seed of the sampled answers.")
    sampled: int = option(0, "Sampled answers per prompt, at each of --sampled-temperatures, graded by exact match "
                          "(noise moves the distribution before it moves the greedy answer); 0 skips.")
    sampled_temperatures: str = option("1.0,0.7", "Comma-separated temperatures of the graded samples.")
    sampled_prompts: int = option(100, "How many test prompts (the first ones) get graded samples.")
    report: str | None = option(None, "Where to write the JSON results (default: RUN/eval.json for a run directory).")
    lm_eval_tasks: str | None = option(
        None, "Comma-separated lm-evaluation-harness tasks to run on the model (needs the lmeval extra)."
    )
    lm_eval_include: str | None = option(None, "Folder of extra lm-eval task YAMLs (searched for --lm-eval-tasks).")
    lm_eval_limit: int | None = option(None, "Run at most this many documents per lm-eval task (quick checks).")


def choose_extract(references: list[str]) -> tuple[str, str]:
    """(mode, why) for --extract auto: the numeric modes only when every reference answer has a number to compare
    (last-number on text answers grades every answer wrong), else the first line."""
    if references and all(extract_answer(r, "after-####") is not None for r in references):
        return "after-####", "every reference answer holds '#### NUMBER'"
    if references and all(last_number(r) is not None for r in references):
        return "last-number", "every reference answer holds a number"
    return "first-line", "not every reference answer holds a number"


def warn_if_unextracted(answers: list[str], mode: str) -> None:
    """One line when the mode finds no answer in most of the model's answers: exact match then says little."""
    missing = sum(extract_answer(a, mode) in (None, "") for a in answers)
    if missing > len(answers) / 2:
        log.warning("eval: --extract %s finds no answer in %d of the %d model answers; exact match counts those as "
                    "wrong (pass another --extract: %s)", mode, missing, len(answers), ", ".join(MODES))


def _resolve_target(target: str) -> tuple[Path, Path | None]:
    path = Path(target)
    if RunDir(path).is_run():
        return RunDir(path).model, path
    if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return path, None
    raise ForgetuneError(f"{target}: neither a forgetune run directory (config.yaml + model/) nor a model directory")


def diversity(answers: list[str], samples: int) -> dict[str, float]:
    """Distinct-1/2 and self-BLEU within each prompt's samples, averaged over prompts."""
    groups = [answers[i : i + samples] for i in range(0, len(answers), samples)]
    return {
        "distinct_1": float(np.mean([distinct_n(g, 1) for g in groups])),
        "distinct_2": float(np.mean([distinct_n(g, 2) for g in groups])),
        "self_bleu": float(np.mean([self_bleu(g) for g in groups])),
    }


def detection(run) -> dict[str, float]:
    """How well the scores (and the negative set) find the corrupted tokens and examples of the training data."""
    from forgetune import pipeline

    scores = pipeline.ranked_values(run)  # what the partition ranked: the AUROC grades that ranking
    token_labels, example_labels = corrupted_tokens(run.tokenizer, run.examples)
    if not token_labels.any() or token_labels.all():
        return {}
    out = {"token_auroc": detection_auroc(scores, token_labels)}
    if 0 < example_labels.sum() < example_labels.size:  # undefined when every example (or none) is corrupted
        per_example = example_scores(scores, example_offsets(run.examples), "min")
        out["example_auroc_min"] = detection_auroc(per_example, example_labels)
    if run.layout.polarity.is_file():
        polarity = np.asarray(pipeline.load_polarity(run))
        # example-level filtering marks a flagged example's tokens ignored: those are what it took out
        negative = polarity == (IGNORED if run.cfg.partition.unit == "example" else NEGATIVE)
        out["token_precision"], out["token_recall"] = precision_recall(negative, token_labels)
        out["negative_fraction_corrupted_tokens"] = float(negative[token_labels].mean())
        out["negative_fraction_clean_tokens"] = float(negative[~token_labels].mean())
    return out


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    if not cfg.target or not (cfg.data or cfg.lm_eval_tasks):
        raise ForgetuneError("eval needs a run or model directory and --data TEST_FILE and/or --lm-eval-tasks TASKS")
    if cfg.extract not in ("auto", *MODES):
        raise ForgetuneError(f"unknown --extract {cfg.extract!r}; choose one of auto, {', '.join(MODES)}")
    model_dir, run_dir = _resolve_target(cfg.target)
    results: dict[str, Any] = {"model": str(model_dir)}
    if cfg.data:
        results.update(data_metrics(model_dir, run_dir, cfg))
    if cfg.lm_eval_tasks:
        from forgetune.lmeval import run_lm_eval

        tasks = [t.strip() for t in cfg.lm_eval_tasks.split(",") if t.strip()]
        if not tasks:
            raise ForgetuneError(f"--lm-eval-tasks {cfg.lm_eval_tasks!r} names no task; pass e.g. --lm-eval-tasks a,b")
        include = Path(cfg.lm_eval_include) if cfg.lm_eval_include else None
        results["lm_eval"] = run_lm_eval(model_dir, tasks, include, cfg.batch_size, cfg.lm_eval_limit)
    report = cfg.report or (RunDir(run_dir).eval_report if run_dir else None)
    if report:
        write_json(report, results)
    return results


def data_metrics(model_dir: Path, run_dir: Path | None, cfg: EvalConfig) -> dict[str, Any]:
    """The --data metrics; the model is loaded here so it is freed before lm-eval loads its own copy."""
    tokenizer = load_tokenizer(model_dir)
    model = load_for_inference(model_dir)
    records = load_records(cfg.data)
    prompts, refs = zip(*(r.prompt_and_answer() for r in records), strict=True)
    if cfg.extract == "auto":
        mode, why = choose_extract(list(refs))
        log.info("eval: --extract auto chose %s (%s)", mode, why)
        cfg = dataclasses.replace(cfg, extract=mode)  # memorised noise and sampled answers are graded alike
    run = noisy = None
    if run_dir is not None:
        from forgetune import pipeline

        run = pipeline.reopen(run_dir)
        noisy = [ex for ex in run.examples if ex.meta.get("corrupted")]
    # The test prompts and the corrupted training prompts (memorised noise) in one call: fuller batches.
    generated = generate_answers(model, tokenizer, [*prompts, *(ex.prompt_messages for ex in noisy or [])],
                                 cfg.max_new_tokens, cfg.batch_size)
    answers, noisy_answers = generated[: len(prompts)], generated[len(prompts) :]
    warn_if_unextracted(answers, cfg.extract)
    hits = [exact_match([a], [r], cfg.extract) for a, r in zip(answers, refs, strict=True)]
    results: dict[str, Any] = {"test": str(cfg.data), "n_test": len(records), "extract": cfg.extract,
                               "exact_match": float(np.mean(hits)),
                               "hits": "".join(str(int(h)) for h in hits)}  # per item, for paired intervals
    in_slice = [r.meta.get("slice") for r in records]
    if any(s is not None for s in in_slice):  # the items a systematic error touches, and the others
        for name, wanted in (("exact_match_slice", True), ("exact_match_off_slice", False)):
            chosen = [h for h, s in zip(hits, in_slice, strict=True) if bool(s) == wanted]
            results[name] = float(np.mean(chosen)) if chosen else None
    examples, _ = tokenize_records(records, tokenizer, max_length=4096)
    test_ce = token_ce(model, examples, tokenizer.pad_token_id, cfg.batch_size, desc="perplexity")
    results["perplexity"] = perplexity(test_ce)
    results["clean_nll"] = float(np.mean(test_ce))  # teacher-forced, nats per token of the clean test answers
    if cfg.sampled > 0:
        results.update(sampled_exact_match(model, tokenizer, list(prompts), list(refs), cfg))
    if cfg.samples > 0:
        torch.manual_seed(cfg.seed)
        sampled = generate_answers(model, tokenizer, list(prompts[: cfg.diversity_prompts]), cfg.max_new_tokens,
                                   cfg.batch_size, samples=cfg.samples, temperature=1.0)
        results.update(diversity(sampled, cfg.samples))
    if run is not None:
        results.update(run_metrics(run, noisy, noisy_answers, cfg))
    results["examples"] = [{"prompt": p[-1]["content"], "reference": r, "answer": a}
                           for p, r, a in list(zip(prompts, refs, answers, strict=True))[:5]]
    return results


def sampled_exact_match(model, tokenizer, prompts: list, refs: list[str], cfg: EvalConfig) -> dict[str, float]:
    """Exact match of sampled answers (cfg.sampled per prompt) at each temperature, over the first prompts."""
    out = {}
    prompts, refs = prompts[: cfg.sampled_prompts], refs[: cfg.sampled_prompts]
    for temperature in (float(t) for t in cfg.sampled_temperatures.split(",") if t.strip()):
        torch.manual_seed(cfg.seed)
        answers = generate_answers(model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size,
                                   samples=cfg.sampled, temperature=temperature)
        repeated = [r for r in refs for _ in range(cfg.sampled)]
        out[f"sampled_em_t{temperature:g}"] = exact_match(answers, repeated, cfg.extract)
    return out


def run_metrics(run, noisy: list, answers: list[str], cfg: EvalConfig) -> dict[str, float]:
    """Memorised noise (the model's `answers` to the `noisy` training examples' prompts) and noise detection, from
    the run's training data and scores."""
    out: dict[str, float] = {}
    if noisy:
        noisy_answers = [run.tokenizer.decode([ex.input_ids[p] for p in response_positions(ex.labels)],
                                              skip_special_tokens=True) for ex in noisy]
        out["memorised_noise"] = memorised_noise(answers, noisy_answers, cfg.extract)
    if run.layout.scores().is_file():
        out.update(detection(run))
    return out


def print_results(results: dict[str, Any]) -> None:
    if "extract" in results:
        print(f"{'extract':<36} {results['extract']}")
    for key, value in results.items():
        if isinstance(value, float):
            print(f"{key:<36} {value:.4f}")
    for task, metrics in results.get("lm_eval", {}).items():
        for name, value in metrics.items():
            print(f"{f'lm_eval/{task}/{name}':<36} {value:.4f}")
    for row in results.get("examples", []):
        print(f"Q: {row['prompt']}\n  reference: {row['reference']}\n  answer:    {row['answer']}")
