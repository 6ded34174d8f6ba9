"""The stages, each a function over one run directory: reference -> score -> partition -> train, and generate.

Every stage records a content hash of its inputs and config (`.done.json`); `run` skips a stage whose hash is
unchanged, so a rerun after a change recomputes only what it must.

The run directory's layout is `forgetune.rundir`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from forgetune import objectives
from forgetune.config import RunConfig, dump_yaml, from_dict, load_yaml, result_settings
from forgetune.data.collator import make_features
from forgetune.data.corpus import Corpus, example_offsets
from forgetune.data.formats import load_examples, load_records
from forgetune.data.hub import is_dataset_name, resolve_data
from forgetune.errors import ForgetuneError
from forgetune.io import (
    NpyFile,
    atomic_path,
    fingerprint_path,
    hash_obj,
    load_npy,
    mark_done,
    read_json,
    save_npy,
    stage_done,
    write_json,
    write_text,
)
from forgetune.models import (
    load_for_inference,
    load_model,
    load_options,
    load_tokenizer,
    load_trainable,
    model_fingerprint,
    resolve_model_path,
    save_model,
)
from forgetune.processes import process_state
from forgetune.rundir import RECORDED_STAGES, STAGES, RunDir, format_info
from forgetune.scoring.partition import IGNORED, NEGATIVE, POSITIVE, example_polarity, partition_polarity
from forgetune.scoring.scorer import token_ce
from forgetune.trainer import AnswerCheck, fit

log = logging.getLogger(__name__)

# Training hyperparameters shared by references and the final model.
OPTIM_FIELDS = ("learning_rate", "lr_scheduler", "warmup_ratio", "weight_decay", "max_grad_norm", "seed")


@dataclass
class Run:
    """What every stage needs, loaded once: the config, the run dir, the tokenizer and the tokenised corpus."""

    cfg: RunConfig
    dir: Path
    model_path: Path
    tokenizer: Any
    examples: Corpus
    data_counts: dict[str, int]
    data_key: str

    @property
    def layout(self) -> RunDir:
        return RunDir(self.dir)

    def stage_dir(self, name: str) -> Path:
        return self.layout.stage(name)

    # Content hashes: each stage's key covers its config and the keys of its inputs.
    def reference_key(self) -> str:
        r = self.cfg.reference
        settings = dataclasses.asdict(r)
        settings.pop("keep_references")  # what happens to the models after scoring does not change them
        return hash_obj(
            "reference", self.data_key, settings, dataclasses.asdict(self.cfg.model),
            {k: getattr(self.cfg.train, k) for k in OPTIM_FIELDS}, self.global_batch(), self.reference_steps(),
            fingerprint_path(resolve_data(r.reference_data)) if r.reference_data else None,
            model_fingerprint(resolve_model_path(r.reference_model)) if r.reference_model else None,
        )

    def global_batch(self) -> int:
        """Examples per optimiser step over all processes: 8 on one process and 4 on each of two train alike."""
        t = self.cfg.train
        return t.batch_size * t.grad_accum * process_state().num_processes

    def score_key(self) -> str:
        return hash_obj("score", self.reference_key())

    def partition_key(self) -> str:
        p = self.cfg.partition
        batch = self.cfg.train.batch_size if p.granularity == "batch" else None
        return hash_obj("partition", self.score_key(), dataclasses.asdict(p), batch)

    def train_key(self) -> str:
        upstream = self.partition_key() if self.objective().needs_partition else self.data_key
        held_out = (fingerprint_path(resolve_data(self.cfg.train.eval_data)),) if self.cfg.train.eval_data else ()
        return hash_obj("train", upstream, result_settings(self.cfg.train), dataclasses.asdict(self.cfg.model),
                        *held_out)

    def objective(self) -> objectives.Objective:
        return objectives.build(self.cfg.train.objective, self.cfg.train.objective_args)

    def reference_steps(self) -> tuple[float, int]:
        """(epochs, max_steps) of each reference: its own max_steps, else the final run's, else its epochs."""
        r, t = self.cfg.reference, self.cfg.train
        return r.reference_epochs, r.reference_max_steps if r.reference_max_steps > 0 else t.max_steps


def open_run(cfg: RunConfig, save_config: bool = True) -> Run:
    """Load the corpus and tokenizer of a run. `save_config` writes `cfg` as RUN/config.yaml (creating the folder);
    commands that only read a run pass False, so the file keeps describing the run that was made."""
    if not cfg.output:
        raise ForgetuneError("no run directory: pass --output DIR")
    corpus = cfg.data.data or cfg.unlearn.forget  # an unlearning run's corpus is its forget set
    if not corpus:
        raise ForgetuneError("no training data: pass --data FILE (.jsonl, .json, .parquet or a datasets folder)")
    corpus = resolve_data(corpus, cfg.data.data_config, cfg.data.data_split) if cfg.data.data else resolve_data(corpus)
    objectives.get(cfg.train.objective)  # fail early on an unknown objective
    reference_data = cfg.reference.reference_data
    if reference_data and not Path(reference_data).exists() and not is_dataset_name(reference_data):
        raise ForgetuneError(f"{cfg.reference.reference_data}: reference data file not found")
    run_dir = Path(cfg.output)
    if run_dir.exists() and not run_dir.is_dir():
        raise ForgetuneError(f"{run_dir}: exists and is not a directory; pass a new or existing run folder to --output")
    model_path = resolve_model_path(cfg.model.model)
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)
    d = cfg.data
    examples, counts = load_examples(corpus, tokenizer, d.format, d.max_length, d.system_prompt)
    data_key = hash_obj("data", fingerprint_path(corpus), dataclasses.asdict(d), model_fingerprint(model_path))
    if save_config and process_state().is_main_process:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ForgetuneError(f"{run_dir}: cannot create the run folder ({e.strerror}); pass another --output"
                                 ) from None
        write_text(RunDir(run_dir).config, dump_yaml(cfg))
    log.info("data: %d examples, %d response tokens, %.1f MB packed (%d truncated, %d skipped empty)",
             counts["examples"], example_offsets(examples)[-1], examples.nbytes / 2**20, counts["truncated"],
             counts["skipped_empty"])
    return Run(cfg, run_dir, model_path, tokenizer, examples, counts, data_key)


def reopen(run_dir: Path) -> Run:
    """The Run of an existing run directory, from its saved config (the directory may have been moved)."""
    cfg = from_dict(load_yaml(RunDir(run_dir).config))
    cfg.output = str(run_dir)
    return open_run(cfg, save_config=False)


# ---------------------------------------------------------------------------------------------------------------- #
# reference


def reference_plan(run: Run) -> list[dict[str, Any]]:
    """Which examples each reference trains on ("train") and which it scores ("score"; None = all)."""
    r, n = run.cfg.reference, len(run.examples)
    perm = np.random.default_rng(run.cfg.train.seed).permutation(n)
    if r.reference_model:
        return [{"train": None, "score": None}]  # trained already: nothing to train, it scores everything
    if r.reference_data:
        return [{"train": "reference_data", "score": None}]
    if r.cross_fit >= 2:
        if r.cross_fit > n:
            raise ForgetuneError(f"cross_fit={r.cross_fit} needs at least that many examples (have {n}); "
                                 "pass a smaller --cross-fit, or --cross-fit 1 for one reference on a subset")
        fold = np.empty(n, dtype=np.int64)
        fold[perm] = np.arange(n) % r.cross_fit
        return [{"train": np.flatnonzero(fold != k).tolist(), "score": np.flatnonzero(fold == k).tolist()}
                for k in range(r.cross_fit)]
    count = r.reference_count if r.reference_count is not None else max(1, round(r.reference_fraction * n))
    if not 1 <= count <= n:
        raise ForgetuneError(f"reference_count must be in [1, {n}], got {count}")
    return [{"train": np.sort(perm[:count]).tolist(), "score": None}]


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def references_deleted(run: Run) -> bool:
    """True when the reference stage finished but its models were deleted after scoring (keep_references off)."""
    stage_dir = run.stage_dir("reference")
    if run.cfg.reference.reference_model or not (stage_dir / "plan.json").is_file():
        return False
    return not all(_is_model_dir(stage_dir / f"model-{k}") for k in range(len(read_json(stage_dir / "plan.json"))))


def reference(run: Run) -> dict[str, Any]:
    """Train the reference model(s) by plain SFT. A finished stage whose models were deleted after scoring stays
    done, unless the scores are to be recomputed: then the models are trained again."""
    key = run.reference_key()
    redo = references_deleted(run) and not stage_done(run.stage_dir("score"), run.score_key())
    if redo:
        log.info("reference: its models were deleted after scoring and the scores are to be recomputed: retraining")
    if (done := run.layout.begin("reference", key, redo)) is not None:
        return done
    started, stage_dir = time.time(), run.stage_dir("reference")
    stage_dir.mkdir(parents=True, exist_ok=True)
    plan = reference_plan(run)
    epochs, max_steps = run.reference_steps()
    sft = objectives.build("sft")
    for k, part in enumerate(plan):
        if part["train"] is None:
            log.info("reference: %s, trained already", run.cfg.reference.reference_model)
            continue
        fold_key = hash_obj(key, k)
        model_dir = stage_dir / f"model-{k}"
        if stage_done(stage_dir / f"fold-{k}", fold_key) and _is_model_dir(model_dir):
            continue  # finished before an interruption
        if part["train"] == "reference_data":
            d = run.cfg.data
            train_examples, _ = load_examples(run.cfg.reference.reference_data, run.tokenizer, d.format,
                                              d.max_length, d.system_prompt)
        else:
            train_examples = [run.examples[i] for i in part["train"]]
        log.info("reference %d/%d: SFT on %d examples", k + 1, len(plan), len(train_examples))
        model = load_trainable(run.model_path, run.cfg.model)
        model, _, weights = fit(model, run.tokenizer, make_features(train_examples), sft, run.cfg.train,
                       stage_dir / f"work-{k}", key=fold_key, epochs=epochs, max_steps=max_steps)
        state = process_state()
        if state.is_main_process:  # with LoRA the adapter (megabytes), not merged weights (a copy of the model)
            save_model(model, run.tokenizer, model_dir, merge_lora=False, weights=weights)
            mark_done(stage_dir / f"fold-{k}", fold_key)
        state.wait_for_everyone()
    if process_state().is_main_process:
        write_json(stage_dir / "plan.json", plan)
    return run.layout.finish("reference", key, started, run.data_counts, references=len(plan),
                             mode=reference_mode(run.cfg, len(plan)))


def reference_mode(cfg: RunConfig, references: int) -> str:
    r = cfg.reference
    if r.reference_model:
        return "reference_model"
    if r.reference_data:
        return "reference_data"
    return f"cross_fit={references}" if references > 1 else "subset"


def reference_model_dir(run: Run, k: int) -> Path:
    """Where reference k's weights are: the given model (--reference-model) or the one the stage trained."""
    given = run.cfg.reference.reference_model
    return resolve_model_path(given) if given else run.stage_dir("reference") / f"model-{k}"


# ---------------------------------------------------------------------------------------------------------------- #
# score


def score(run: Run) -> dict[str, Any]:
    """CE of the base and of the reference on every response token; score = CE_base - CE_ref."""
    key = run.score_key()
    if (done := run.layout.begin("score", key)) is not None:
        return done
    ref_dir = run.stage_dir("reference")
    if not stage_done(ref_dir, run.reference_key()):
        raise ForgetuneError(f"{ref_dir}: no up-to-date reference model; run `forgetune reference` first")
    if references_deleted(run):
        raise ForgetuneError(f"{ref_dir}: the reference models were deleted after an earlier scoring; run "
                             "`forgetune reference` to train them again (`forgetune run` does it by itself)")
    started, cfg = time.time(), run.cfg
    plan = read_json(ref_dir / "plan.json")
    pad, offsets = run.tokenizer.pad_token_id, example_offsets(run.examples)
    n_tokens = int(offsets[-1])
    main = process_state().is_main_process
    # The main process writes its arrays slice by slice into files in the stage's temporary folder (memory stays flat
    # in the corpus size); under `accelerate launch` the others hold in-memory partial arrays the all-reduce fills in.
    with (atomic_path(run.stage_dir("score"), is_dir=True) if main else contextlib.nullcontext()) as tmp, \
            contextlib.ExitStack() as files:

        def array(name: str) -> np.ndarray | NpyFile:
            if tmp is None:
                return np.zeros(n_tokens, dtype=np.float32)
            return files.enter_context(NpyFile(tmp / f"{name}.npy", n_tokens))

        base = load_model(run.model_path, **load_options(cfg.model))
        ce_base = token_ce(base, run.examples, pad, cfg.score.score_batch_size, out=array("ce_base"),
                           desc="scoring base")
        del base
        ce_ref = array("ce_ref")
        for k, part in enumerate(plan):
            ref = load_for_inference(reference_model_dir(run, k), base=run.model_path, **load_options(cfg.model))
            token_ce(ref, run.examples, pad, cfg.score.score_batch_size, indices=part["score"], out=ce_ref,
                     desc=f"scoring reference {k + 1}/{len(plan)}")
            del ref
        stats = _subtract_in_chunks(ce_base, ce_ref, array("scores"))
        if tmp is not None:
            save_npy(tmp / "offsets.npy", offsets)
            write_json(tmp / "ids.json", run.examples.ids)
    info = run.layout.finish("score", key, started, run.data_counts, **stats)
    if not cfg.reference.keep_references and main:
        _delete_references(ref_dir)
    return info


def _subtract_in_chunks(ce_base: np.ndarray | NpyFile, ce_ref: np.ndarray | NpyFile,
                        scores: np.ndarray | NpyFile, chunk: int = 1 << 22) -> dict[str, Any]:
    """scores = ce_base - ce_ref, and the stage's means, a chunk at a time (nothing corpus-sized is held)."""
    n, sums, bad = len(scores), np.zeros(3), 0
    for start in range(0, n, chunk):
        base, ref = ce_base[start : start + chunk], ce_ref[start : start + chunk]
        diff = base - ref
        bad += int((~np.isfinite(diff)).sum())
        scores[start : start + chunk] = diff
        sums += [diff.sum(dtype=np.float64), base.sum(dtype=np.float64), ref.sum(dtype=np.float64)]
    if bad:
        raise ForgetuneError(f"{bad} non-finite score(s): check the models' dtype")
    mean_score, mean_ce_base, mean_ce_ref = (sums / n if n else sums).tolist()
    return {"tokens": n, "mean_score": mean_score, "mean_ce_base": mean_ce_base, "mean_ce_ref": mean_ce_ref}


def _delete_references(ref_dir: Path) -> None:
    """Only scoring reads the reference models, and a rescore trains them again: a run need not keep them."""
    model_dirs = sorted(p for p in ref_dir.glob("model-*") if p.is_dir())
    size = sum(f.stat().st_size for d in model_dirs for f in d.rglob("*") if f.is_file())
    for model_dir in model_dirs:
        shutil.rmtree(model_dir)
    if model_dirs:
        log.info("reference: deleted its %d model(s) after scoring (%.0f MB; --keep-references keeps them)",
                 len(model_dirs), size / 1e6)


def load_scores(run: Run, name: str = "scores") -> np.ndarray:
    """A flat per-token array of the score stage, checked against the current corpus (a stale file is an error)."""
    score_dir = run.stage_dir("score")
    if not run.layout.scores(name).is_file():
        raise ForgetuneError(f"{score_dir}: no scores; run `forgetune score` first")
    offsets = load_npy(score_dir / "offsets.npy", mmap=False)
    ids = read_json(score_dir / "ids.json")
    if ids != run.examples.ids or not np.array_equal(offsets, example_offsets(run.examples)):
        raise ForgetuneError(
            f"{score_dir}: the scores belong to another dataset or tokenisation (stale cache); "
            f"delete {score_dir} and rerun `forgetune score` on this data"
        )
    return load_npy(run.layout.scores(name))


def ranked_values(run: Run) -> np.ndarray:
    """The per-token value the partition ranks (high = learn): the score, -CE_ref with rank_by reference, or with
    rank_by labels -1 on the tokens that differ from the record's clean completion and 0 elsewhere."""
    if run.cfg.partition.rank_by == "labels":
        from forgetune.metrics.detection import corrupted_tokens

        if not any("clean_completion" in ex.meta for ex in run.examples):
            raise ForgetuneError(f"{run.cfg.data.data}: --rank-by labels needs records whose meta holds "
                                 "clean_completion (and corrupted: true where the answer is wrong); none has one")
        return -corrupted_tokens(run.tokenizer, run.examples)[0].astype(np.float32)
    if run.cfg.partition.rank_by == "reference":
        return -np.asarray(load_scores(run, "ce_ref"))
    return np.asarray(load_scores(run))


# ---------------------------------------------------------------------------------------------------------------- #
# partition


def partition(run: Run) -> dict[str, Any]:
    """Rank the scored tokens and label each +1 (learn), -1 (forget) or 0 (ignore)."""
    key = run.partition_key()
    if (done := run.layout.begin("partition", key)) is not None:
        return done
    if not stage_done(run.stage_dir("score"), run.score_key()):
        raise ForgetuneError(f"{run.stage_dir('score')}: no up-to-date scores; run `forgetune score` first")
    started, p = time.time(), run.cfg.partition
    log.info("partition: %s", ranking_in_force(run.cfg))
    if not process_state().is_main_process:  # one process ranks and writes; the others wait for its record
        return run.layout.finish("partition", key, started, run.data_counts)
    values = ranked_values(run)
    offsets = example_offsets(run.examples)
    if p.rank_by == "labels":
        polarity = np.where(values < 0, NEGATIVE, POSITIVE).astype(np.int8)
    else:
        try:  # partition_tokens rejects NaN scores itself: no second pass over the corpus here
            polarity = partition_polarity(values, offsets, p.rho, p.granularity, run.cfg.train.batch_size,
                                          p.negative_below, p.neutral)
        except ValueError as e:
            raise ForgetuneError(f"{run.stage_dir('score')}/scores.npy: {e} (delete {run.stage_dir('score')} "
                                 "first: an up-to-date stage is otherwise skipped)") from None
    if p.unit == "example":
        polarity = example_polarity(polarity, offsets)
    stage_dir = run.stage_dir("partition")
    stage_dir.mkdir(parents=True, exist_ok=True)
    save_npy(run.layout.polarity, polarity)
    counts = {
        "positive": int((polarity == POSITIVE).sum()),
        "negative": int((polarity == NEGATIVE).sum()),
        "ignored": int((polarity == IGNORED).sum()),
    }
    return run.layout.finish("partition", key, started, run.data_counts, ranked_by=p.rank_by, **counts)


RANKINGS = {
    "difference": "CE_base - CE_ref (the paper's score: what the reference learned beyond the base)",
    "reference": "-CE_ref (the reference's own surprise at the token)",
}


def ranking_in_force(cfg: RunConfig) -> str:
    """One line on what decides each token's polarity, so a user sees which detector their run used."""
    p = cfg.partition
    if p.rank_by == "labels":
        return "negatives are the tokens that differ from each record's meta.clean_completion (no ranking)"
    negatives = "every other token" if p.negative_below is None else f"the others ranked below {p.negative_below:g}"
    why = {("reference", True): " (the default with --reference-data or --reference-model: a trusted reference "
                                 "never saw the corpus's errors, so they surprise it; docs/results.md section 0)",
           ("difference", False): " (the default without --reference-data; with a trusted file forgetune ranks by "
                                   "-CE_ref instead: docs/results.md section 0)"}
    return (f"ranking by {RANKINGS[p.rank_by]}; top {p.rho:g} positive, negative: {negatives}"
            + (", whole examples" if p.unit == "example" else "")
            + why.get((p.rank_by, bool(cfg.reference.reference_data or cfg.reference.reference_model)), ""))


def load_polarity(run: Run) -> np.ndarray:
    stage_dir = run.stage_dir("partition")
    if not stage_done(stage_dir, run.partition_key()):
        raise ForgetuneError(f"{stage_dir}: no up-to-date partition; run `forgetune partition` first")
    polarity = load_npy(run.layout.polarity)
    if polarity.shape[0] != example_offsets(run.examples)[-1]:
        raise ForgetuneError(f"{stage_dir}: the partition does not match the dataset; rerun `forgetune partition`")
    return polarity


# ---------------------------------------------------------------------------------------------------------------- #
# train


def eval_features(run: Run, path: str | None) -> list[dict[str, Any]] | None:
    """The held-out records scored during training (--eval-data), tokenised like the corpus."""
    if not path:
        return None
    d = run.cfg.data
    return make_features(load_examples(path, run.tokenizer, d.format, d.max_length, d.system_prompt)[0])


def answer_check(run: Run) -> AnswerCheck | None:
    """--eval-answers: the held-out records' prompts and reference answers, answered at every evaluation."""
    t, d = run.cfg.train, run.cfg.data
    if not t.eval_answers:
        return None
    prompts, references = zip(*(r.prompt_and_answer() for r in load_records(t.eval_data, d.format, d.system_prompt)),
                              strict=True)
    return AnswerCheck(list(prompts), list(references), t.eval_answers, t.eval_max_new_tokens)


def train(run: Run) -> dict[str, Any]:
    """Fine-tune from the base with the configured objective; save an HF model dir at RUN/model."""
    key = run.train_key()
    if (done := run.layout.begin("train", key)) is not None:
        return done
    started, cfg = time.time(), run.cfg
    objective = run.objective()
    offsets = polarity = base_ce = None
    if objective.needs_partition:
        polarity = load_polarity(run)
        offsets = example_offsets(run.examples)
    if objective.needs_base_ce:
        base_ce = load_scores(run, "ce_base")
        offsets = example_offsets(run.examples)
    features = make_features(run.examples, offsets, polarity, base_ce)
    log.info("train: objective %s on %d examples", objective.name, len(features))
    stage_dir = run.stage_dir("train")
    stage_dir.mkdir(parents=True, exist_ok=True)
    model = load_trainable(run.model_path, cfg.model)
    model, history, weights = fit(model, run.tokenizer, features, objective, cfg.train, stage_dir, key=key,
                                  eval_features=eval_features(run, cfg.train.eval_data), answers=answer_check(run))
    if process_state().is_main_process:  # under `accelerate launch`: the main process saves and records
        save_model(model, run.tokenizer, run.layout.model, cfg.model.merge_lora, weights)
        write_json(run.layout.log_history("train"), history)
    logged = [h for h in history if "loss" in h]
    last = logged[-1] if logged else {}  # the last logged step: every logging_steps, so not always the final one
    final = {k: last[k] for k in ("loss", "ce", "ce_pos", "ce_neg", "neg_term", "lambda") if k in last}
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    if evals:
        final.update(eval_loss=evals[-1], best_eval_loss=min(evals))
    matches = [h["eval_exact_match"] for h in history if "eval_exact_match" in h]
    if matches:
        final.update(eval_exact_match=matches[-1])
    end = next((h for h in history if "train_runtime" in h), {})  # Trainer's closing record: the real step count
    return run.layout.finish("train", key, started, run.data_counts, objective=objective.name, steps=end.get("step"),
                   train_runtime=end.get("train_runtime"), **final)


# ---------------------------------------------------------------------------------------------------------------- #
# generate and run


def prompts_for(run: Run) -> list[list[dict[str, str]]]:
    g = run.cfg.generate
    if g.prompts:
        records = load_records(g.prompts, run.cfg.data.format, run.cfg.data.system_prompt)
        return [[m for m in r.messages if m["role"] != "assistant"] or r.messages for r in records]
    return [ex.prompt_messages for ex in run.examples[: g.num_prompts]]


def generate(run: Run, model_dir: Path | None = None) -> list[dict[str, Any]]:
    """Greedy answers of the run's model (and of the base, with compare_base) to the configured prompts."""
    from forgetune.generation import generate_answers

    model_dir = model_dir or run.layout.model
    if not model_dir.is_dir():
        raise ForgetuneError(f"{model_dir}: no trained model; run `forgetune train` first")
    prompts, g = prompts_for(run), run.cfg.generate
    rows = [{"prompt": p[-1]["content"]} for p in prompts]
    models = {"answer": model_dir}
    if g.compare_base:
        models = {"base": run.model_path, **models}
    for column, path in models.items():
        model = load_for_inference(path, **load_options(run.cfg.model))
        for row, answer in zip(rows, generate_answers(model, run.tokenizer, prompts, g.max_new_tokens), strict=True):
            row[column] = answer
        del model
    if process_state().is_main_process:
        write_text(run.layout.generations, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows


def run_all(run: Run) -> dict[str, Any]:
    """Every stage the objective needs, each skipped when its inputs and config are unchanged."""
    needed = STAGES if run.objective().needs_partition else ("train",)
    functions = {"reference": reference, "score": score, "partition": partition, "train": train}
    for stage in needed:
        functions[stage](run)
    return read_json(run.layout.summary)


def print_summary(summary: dict[str, Any], run_dir) -> None:
    """A stage per line: its time and its record, rounded (the CLI's and the demo's closing summary)."""
    print(f"run: {run_dir}")
    for stage in (s for s in RECORDED_STAGES if s in summary["stages"]):
        info = summary["stages"][stage]
        print(f"  {stage:<10} {info['seconds']:>8.1f} s  {format_info(info, skip=('seconds',))}")
