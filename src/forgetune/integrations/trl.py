"""Forgetting inside a TRL script: score a dataset once, train it with TRL's own SFTTrainer.

`score_dataset` tokenises a `datasets.Dataset` exactly as TRL's SFTTrainer does (any format it accepts: messages,
prompt/completion, text) and adds two per-token columns aligned with `input_ids`: `polarity` (+1 learn, -1 forget,
0 ignore) and `base_ce` (the base model's CE, for the objectives that need it). The reference, the scores and the
partition are forgetune's own stages, cached by content hash in a run directory. The result is a plain dataset: save
it with `save_to_disk` or push it, and the scores travel with the data.

`ForgetSFTTrainer` is `trl.SFTTrainer` with `objective=`: any registered forgetune loss, computed from TRL's fused
LM head (per-token log-probabilities without the full logits) and the columns above, padded, packed and flattened
(padding-free) along with `input_ids`. Every other SFTConfig option keeps working.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer, pack_dataset
from trl.chat_template_utils import get_training_chat_template, has_generation_markers
from trl.data_utils import is_conversational

from forgetune import objectives
from forgetune.config import dump_yaml, resolve
from forgetune.data.collator import TOKEN_FIELDS, make_features
from forgetune.data.corpus import IGNORE_INDEX, Corpus, Example, example_offsets
from forgetune.errors import ForgetuneError
from forgetune.io import cache_dir, hash_obj, write_text
from forgetune.models import load_tokenizer, model_fingerprint, resolve_model_path
from forgetune.objectives import Objective, TokenBatch
from forgetune.pipeline import Run, load_polarity, load_scores, partition, reference, score
from forgetune.processes import process_state
from forgetune.rundir import RunDir
from forgetune.trainer import ObjectiveLossMixin, flat_token_batch

# The per-token columns and their padding value (0: not a loss token).
TOKEN_COLUMNS = {name: TOKEN_FIELDS[name] for name in ("polarity", "base_ce")}

# SFTConfig fields that decide how TRL tokenises a dataset: scoring reads the user's, so the scores land on the
# tokens the trainer will see.
PREPARATION_FIELDS = ("max_length", "truncation_mode", "dataset_text_field", "assistant_only_loss",
                      "completion_only_loss", "eos_token", "dataset_num_proc")


# ------------------------------------------------------------------------------------------------------------------ #
# score once


class _Preparation:
    """What SFTTrainer's dataset preparation reads off its trainer, set as SFTTrainer.__init__ sets it: the tokenizer,
    whether only completions are trained, and the training chat template when assistant_only_loss needs one."""

    def __init__(self, tokenizer, args: SFTConfig, sample: dict[str, Any]):
        self._tokenizer = tokenizer
        by_format = "prompt" in sample and "completion" in sample
        self.completion_only_loss = by_format if args.completion_only_loss is None else args.completion_only_loss
        self.chat_template = None
        if args.assistant_only_loss:
            if not is_conversational(sample):
                raise ForgetuneError("assistant_only_loss=True needs a conversational dataset (messages, or prompt/"
                                     "completion as lists of messages)")
            if not has_generation_markers(tokenizer.chat_template):
                self.chat_template = get_training_chat_template(tokenizer)


def trl_tokenize(dataset: Dataset, tokenizer, args: SFTConfig | None = None) -> Dataset:
    """`dataset` tokenised by TRL's SFTTrainer preparation under `args`' data settings: `input_ids` and `labels`
    (-100 where TRL trains nothing), unpacked and in order (forgetune packs and shuffles later, with the scores)."""
    settings = {f: getattr(args, f) for f in PREPARATION_FIELDS} if args is not None else {}
    if args is not None and args.chat_template_path is not None:
        raise ForgetuneError("score_dataset: set the chat template on the tokenizer you pass (processing_class) "
                             "instead of chat_template_path")
    prep_args = SFTConfig(output_dir=str(cache_dir() / "trl-preparation"), report_to="none", use_cpu=True, bf16=False,
                          packing=False,
                          shuffle_dataset=False, **settings)
    if prep_args.eos_token is not None:
        tokenizer.eos_token = prep_args.eos_token
    shim = _Preparation(tokenizer, prep_args, next(iter(dataset)))
    return SFTTrainer._prepare_dataset(shim, dataset, tokenizer, prep_args, False, None, "train")


def _examples(prepared: Dataset) -> Corpus:
    """forgetune's view of TRL's tokens: position 0 is never a loss token (nothing predicts it; TRL's shifted loss
    skips it too), so a language-modelling row's first label is dropped."""

    def rows():
        for i, row in enumerate(prepared.select_columns(["input_ids", "labels"])):
            labels = list(row["labels"])
            labels[0] = IGNORE_INDEX
            yield Example(id=str(i), input_ids=list(row["input_ids"]), labels=labels, prompt_messages=[])

    return Corpus.pack(rows())


def score_dataset(dataset: Dataset, model: str, *, processing_class=None, args: SFTConfig | None = None,
                  output_dir: str | Path | None = None, **settings: Any) -> Dataset:
    """`dataset` tokenised as TRL's SFTTrainer tokenises it under `args`, plus per-token `polarity` and `base_ce`.

    `model`: the base model to fine-tune (a local dir or Hub id). `settings`: forgetune's reference and partition
    fields, e.g. `reference_data="trusted.jsonl"` (train a reference on a trusted file), `reference_model="ref/"`
    (one trained already), `cross_fit=2`, `rho`, `negative_below`, `rank_by`; the reference trains with the train
    fields (`learning_rate`, `reference_epochs`, ...). Their defaults are forgetune's (`forgetune run --help`).
    `output_dir`: the run directory of the reference, scores and partition (config.yaml, summary.json); by default
    one per content hash under forgetune's cache, so the same call twice scores once."""
    if len(dataset) == 0:
        raise ForgetuneError("score_dataset: the dataset is empty")
    model_path = resolve_model_path(model)
    cfg = resolve(flags={"model": model, **settings})
    tokenizer = processing_class if processing_class is not None else load_tokenizer(model_path,
                                                                                      cfg.model.trust_remote_code)
    if tokenizer.pad_token is None:  # as SFTTrainer does: scoring pads its batches
        tokenizer.pad_token = tokenizer.eos_token
    prepared = trl_tokenize(dataset, tokenizer, args)
    examples = _examples(prepared)
    if not examples or not example_offsets(examples)[-1]:
        raise ForgetuneError("score_dataset: no example has a token to train on after TRL's preparation")
    tokens = hashlib.sha256()
    for packed in (examples.starts, examples.tokens, examples.response_bits):  # every example's ids and labels
        tokens.update(packed)
    data_key = hash_obj("trl-data", tokens.hexdigest(), model_fingerprint(model_path))
    run_dir = Path(output_dir) if output_dir is not None else cache_dir() / "scored" / hash_obj(data_key, cfg.to_dict())
    cfg.output = str(run_dir)
    if process_state().is_main_process:  # under `accelerate launch` every process scores; one writes
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(RunDir(run_dir).config, dump_yaml(cfg))
    process_state().wait_for_everyone()
    counts = {"examples": len(examples), "truncated": 0, "skipped_empty": len(dataset) - len(examples)}
    run = Run(cfg, run_dir, model_path, tokenizer, examples, counts, data_key)
    for stage in (reference, score, partition):
        stage(run)
    return with_token_columns(prepared, examples, load_polarity(run), np.asarray(load_scores(run, "ce_base")),
                              fingerprint=run.partition_key())


def with_token_columns(prepared: Dataset, examples: Sequence[Example], polarity: np.ndarray, base_ce: np.ndarray,
                       fingerprint: str | None = None) -> Dataset:
    """The prepared dataset with the flat per-token arrays (corpus order) spread onto each row's positions, as
    forgetune's own training features carry them. `fingerprint`: the dataset's new cache fingerprint (else
    `datasets` hashes the arrays themselves)."""
    features = make_features(examples, example_offsets(examples), polarity, base_ce)

    def add(_row: dict[str, Any], i: int) -> dict[str, list]:
        return {name: features[i][name] for name in TOKEN_COLUMNS}

    return prepared.map(add, with_indices=True, desc="Adding polarity and base CE", new_fingerprint=fingerprint)


@dataclasses.dataclass
class ForgetArguments:
    """forgetune's flags in a TRL script (`TrlParser((ScriptArguments, SFTConfig, ModelConfig, ForgetArguments))`).
    A field left None keeps forgetune's default (`forgetune run --help`)."""

    reference_data: str | None = dataclasses.field(default=None, metadata={
        "help": "Trusted file (any forgetune data format) to train the reference on; it scores the whole corpus."})
    reference_model: str | None = dataclasses.field(default=None, metadata={
        "help": "A reference trained already (model or adapter dir, Hub id) that never saw the corpus."})
    cross_fit: int | None = dataclasses.field(default=None, metadata={
        "help": "Without a trusted reference: K references, each scoring the fold it did not train on."})
    rho: float | None = dataclasses.field(default=None, metadata={"help": "Fraction of tokens ranked positive."})
    negative_below: float | None = dataclasses.field(default=None, metadata={
        "help": "Negatives only where the ranked value is below this (-2.3 with a trusted reference: p < 0.1)."})
    objective: str = dataclasses.field(default="ignore", metadata={
        "help": "forgetune loss: ignore (drop the negatives), forget-npo, forget-unlikelihood, forget, sft, ..."})
    scoring_dir: str | None = dataclasses.field(default=None, metadata={
        "help": "Run directory of the reference, scores and partition (default: forgetune's cache)."})

    def scoring(self) -> dict[str, Any]:
        """`score_dataset`'s keyword arguments: the fields set, under their forgetune names."""
        settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                    if f.name not in ("objective", "scoring_dir") and getattr(self, f.name) is not None}
        return {**settings, "output_dir": self.scoring_dir}


# ------------------------------------------------------------------------------------------------------------------ #
# train anywhere


@dataclasses.dataclass
class ForgetCollator:
    """TRL's collator, with the per-token columns laid out as it lays out `input_ids`: right-padded rows, or one
    flattened row when padding-free."""

    collator: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]
    padding_free: bool = False

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collator([{k: v for k, v in ex.items() if k not in TOKEN_COLUMNS} for ex in examples])
        ids = [list(ex["input_ids"]) for ex in examples]
        rows = [sum(ids, [])] if self.padding_free else ids
        if any(batch["input_ids"][r, : len(row)].tolist() != row for r, row in enumerate(rows)):
            raise ForgetuneError("the data collator does not right-pad input_ids, so the per-token columns cannot "
                                 "follow; use TRL's default collator (data_collator=None)")
        for name, fill in TOKEN_COLUMNS.items():
            if name not in examples[0]:
                continue
            dtype = torch.float32 if isinstance(fill, float) else torch.long
            values = [torch.tensor(ex[name], dtype=dtype) for ex in examples]
            values = [torch.cat(values)] if self.padding_free else values
            out = torch.full(batch["input_ids"].shape, fill, dtype=dtype)
            for r, v in enumerate(values):
                out[r, : len(v)] = v
            batch[name] = out
        return batch


def build_objective(objective: str | Objective, settings: dict[str, Any] | None = None) -> Objective:
    """A registered forgetune loss by name with its declared settings (lambda_max, npo_beta, ...)."""
    if isinstance(objective, Objective):
        if settings:
            raise ForgetuneError("objective_args set the settings of an objective given by name, not of an instance")
        return objective
    return objectives.build(objective, settings)


def sequence_ids(inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """(B, T): the example each position belongs to, where padding-free and packed rows hold several (told apart by
    their position ids restarting at 0); None for padded rows, one example each."""
    if "position_ids" not in inputs:
        return None
    starts = inputs["position_ids"] == 0
    return starts.flatten().cumsum(0).view_as(starts) - 1


class ForgetSFTTrainer(ObjectiveLossMixin, SFTTrainer):
    """`trl.SFTTrainer` training a forgetune objective on a dataset from `score_dataset`.

    `objective`: a registered loss (`forgetune.objectives.names()`) or an instance; `objective_args`: its settings.
    The default, ignore, drops the tokens scored negative: with a reference trained on trusted data it did as well
    as pushing them down (docs/results.md section 0). An eval dataset needs no scores: evaluation is TRL's own loss.
    """

    def __init__(self, *args: Any, objective: str | Objective = "ignore", objective_args: dict[str, Any] | None = None,
                 max_negative_term: float | None = None, **kwargs: Any):
        loss = build_objective(objective, objective_args)
        if loss.writes_gradients:
            raise ForgetuneError(f"{loss.name} writes gradients itself; train it with `forgetune run` instead")
        if kwargs.get("compute_loss_func") is not None:
            raise ForgetuneError("ForgetSFTTrainer's loss is its objective: drop compute_loss_func, or register the "
                                 "loss as a forgetune objective")
        sft_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if getattr(sft_args, "loss_type", "nll") != "nll" or getattr(sft_args, "label_smoothing_factor", 0) > 0:
            raise ForgetuneError("ForgetSFTTrainer's loss is its objective: leave SFTConfig's loss_type (nll) and "
                                 "label_smoothing_factor (0) at their defaults")
        super().__init__(*args, objective=loss, max_negative_term=max_negative_term, **kwargs)
        columns = self.train_dataset.column_names  # None: a streamed dataset, whose columns show in its batches
        for column, needed in (("polarity", loss.needs_partition), ("base_ce", loss.needs_base_ce)):
            if needed and columns is not None and column not in columns:
                raise ForgetuneError(f"objective {loss.name} needs the {column} column: train on a dataset from "
                                     "forgetune.integrations.trl.score_dataset")
        self.data_collator = ForgetCollator(self.data_collator, padding_free=self.padding_free)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns += [c for c in TOKEN_COLUMNS if c not in self._signature_columns]

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        """A scored dataset is tokenised already: TRL's truncation and packing, applied to the per-token columns
        too (TRL's own keep only input_ids and labels)."""
        columns = set(dataset.column_names or [])
        if not columns & set(TOKEN_COLUMNS):
            return super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
        if not {"input_ids", "labels"} <= columns:
            raise ForgetuneError(f"the {dataset_name} dataset has per-token columns but no input_ids / labels: "
                                 "make it with forgetune.integrations.trl.score_dataset")
        aligned = ["input_ids", "labels", *(c for c in TOKEN_COLUMNS if c in columns)]
        if args.max_length is not None and not packing:
            keep = (slice(None, args.max_length) if args.truncation_mode == "keep_start"
                    else slice(-args.max_length, None))
            dataset = dataset.map(lambda row: {c: row[c][keep] for c in aligned}, desc=f"Truncating {dataset_name}")
            dataset = dataset.filter(lambda row: any(label != IGNORE_INDEX for label in row["labels"][1:]))
        if packing:
            if args.max_length is None:
                raise ForgetuneError("packing needs max_length (SFTConfig(max_length=...))")
            dataset = dataset.select_columns(aligned)
            if args.shuffle_dataset:
                dataset = dataset.shuffle(seed=args.seed)
            dataset = pack_dataset(dataset, args.max_length, args.packing_strategy)
        return dataset.shuffle(seed=args.seed) if args.shuffle_dataset else dataset

    def token_batch(self, model, inputs) -> tuple[torch.Tensor, TokenBatch, Any]:
        """TRL's fused LM head: each loss token's log-probability without the (B, T, V) logits; the per-token
        columns at the same positions, in the same (row, position) order."""
        model_inputs = {k: v for k, v in inputs.items() if k not in TOKEN_COLUMNS}
        outputs = model(**model_inputs, use_cache=False, fused_lm_head=True)
        ce = -outputs.log_probs[outputs.label_mask]
        return ce, flat_token_batch(inputs, sequence_ids(inputs)), outputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:  # evaluation: TRL's own (the held-out completions' mean CE and its metrics)
            inputs = {k: v for k, v in inputs.items() if k not in TOKEN_COLUMNS}
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = self.objective_loss(model, inputs)
        self.record_trl_metrics(outputs, inputs)
        return (loss, outputs) if return_outputs else loss

    def record_trl_metrics(self, outputs, inputs) -> None:
        """What SFTTrainer logs of a training step, from the same fused-head outputs: entropy, mean token accuracy and
        the running count of tokens seen, so a TRL user's dashboards keep their curves."""
        gather = self.accelerator.gather_for_metrics
        valid = gather(outputs.label_mask.sum()).sum()
        metrics = self._metrics["train"]
        for name, values in (("entropy", outputs.entropy), ("mean_token_accuracy", outputs.is_top1)):
            if values is not None:
                total = gather(values.detach().sum()).sum()
                metrics[name].append((total / valid).item() if valid > 0 else 0.0)
        tokens = inputs["attention_mask"].sum() if "attention_mask" in inputs else inputs["input_ids"].new_tensor(
            inputs["input_ids"].shape[1])
        self._total_train_tokens += gather(tokens).sum().item()
        metrics["num_tokens"] = [self._total_train_tokens]


__all__ = ["ForgetArguments", "ForgetCollator", "ForgetSFTTrainer", "score_dataset", "trl_tokenize"]
