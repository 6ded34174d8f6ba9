"""Typed configuration. One dataclass per concern; YAML sections and CLI flags map onto the fields 1:1.

A YAML file has one section per dataclass (``model:``, ``data:``, ...) whose keys are the field names; every field is
also a flag, ``--field-name``. Precedence: defaults < ``--preset`` < YAML < flags. The resolved config is saved as
``config.yaml`` in every run directory.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from forgetune.errors import ForgetuneError
from forgetune.settings import FieldInfo, at_least, field_infos, option
from forgetune.settings import one_of as _one_of


@dataclass
class ModelConfig:
    model: str | None = option(None, "Causal LM: a local Hugging Face directory or a Hub id (org/name; from the local "
                                     "cache when HF_HUB_OFFLINE=1). Default: the embedded SmolLM2-135M.")
    dtype: str = option("auto", "Weights dtype for training and scoring: auto (bfloat16 on a GPU that supports it, "
                                "else float32), float32, bfloat16 or float16 (inference only).")
    lora: bool = option(False, "Train LoRA adapters instead of all weights.")
    lora_r: int = option(16, "LoRA rank.")
    lora_alpha: int = option(32, "LoRA alpha (scale = alpha / r).")
    lora_dropout: float = option(0.05, "LoRA dropout.")
    lora_target_modules: str = option("all-linear", "Comma-separated module names, or 'all-linear'.")
    merge_lora: bool = option(True, "Merge LoRA weights into the saved model (else save the adapter only).")
    gradient_checkpointing: bool = option(False, "Recompute activations in the backward pass to save memory.")
    trust_remote_code: bool = option(False, "Run the model's own code from its repository (transformers' "
                                            "trust_remote_code): only for a model whose code you trust.")
    attn_implementation: str | None = option(None, "Attention kernel: eager, sdpa, flash_attention_2, ... "
                                                   "(transformers' attn_implementation; default: its own choice).")

    def validate(self) -> None:
        if self.lora_r < 1:
            raise ForgetuneError(f"lora_r must be >= 1, got {self.lora_r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ForgetuneError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")


@dataclass
class DataConfig:
    data: str | None = option(None, "Training corpus: .jsonl, .json, .parquet, a datasets.save_to_disk folder, or a "
                                    "Hugging Face dataset name (org/name; from the cache when HF_HUB_OFFLINE=1).")
    data_config: str | None = option(None, "With a dataset name: its configuration (datasets' `name`).")
    data_split: str = option("train", "With a dataset name: the split to train on.")
    format: str = option("auto", "Record format: auto (told by each record's fields), chat, prompt-completion, alpaca, "
                                 "question-answer, sharegpt or text (no template, a loss on every token).")
    max_length: int = option(512, "Truncate tokenised examples to this many tokens (truncations are counted).")
    system_prompt: str | None = option(None, "System message prepended to every conversation that has none.")

    def validate(self) -> None:
        if self.max_length < 1:
            raise ForgetuneError(f"max_length must be >= 1, got {self.max_length}")


@dataclass
class ReferenceConfig:
    reference_data: str | None = option(
        None, "Separate trusted/curated file to train the reference on (the paper's setting); it scores all examples."
    )
    reference_model: str | None = option(
        None, "An already trained reference (a model dir, LoRA adapter dir or Hub id) that never saw this corpus, e.g. "
        "one trained on trusted data before: it scores every example and nothing is trained."
    )
    cross_fit: int = option(
        2, "K >= 2: K references, each trained on all folds but one and scoring only that unseen fold. 1: off."
    )
    reference_fraction: float = option(0.3, "Without reference_data and cross_fit: fraction of the corpus to train on.")
    reference_count: int | None = option(None, "Like reference_fraction, as a number of examples (wins if set).")
    reference_epochs: float = option(2.0, "Epochs of plain SFT for the reference.")
    reference_max_steps: int = option(-1, "If > 0, stop the reference after this many optimizer steps.")
    keep_references: bool = option(
        False, "Keep the reference models after scoring (by default they are deleted then: only scoring reads them, "
        "and a rescore retrains them)."
    )

    def validate(self) -> None:
        if self.cross_fit < 1:
            raise ForgetuneError(f"cross_fit must be >= 1, got {self.cross_fit}")
        if self.reference_data and self.reference_model:
            raise ForgetuneError("reference_data trains a reference and reference_model is one already trained: pass "
                                 "one of --reference-data and --reference-model")
        if not 0.0 < self.reference_fraction <= 1.0:
            raise ForgetuneError(f"reference_fraction must be in (0, 1], got {self.reference_fraction}")


@dataclass
class ScoreConfig:
    score_batch_size: int = option(16, "Examples per forward pass when scoring.")

    def validate(self) -> None:
        if self.score_batch_size < 1:
            raise ForgetuneError(f"score_batch_size must be >= 1, got {self.score_batch_size}")


@dataclass
class PartitionConfig:
    rho: float = option(0.7, "Fraction of response tokens ranked positive (top scores).")
    granularity: str = option(
        "global", "Ranking scope: global (whole corpus), sequence (each example) or batch (runs of batch_size "
        "consecutive examples in corpus order, not the shuffled training batches)."
    )
    rank_by: str = option(
        "difference", "What ranks the tokens: difference (score = CE_base - CE_ref, the paper's), reference "
        "(-CE_ref: tokens the reference finds unlikely rank lowest; under cross-fit it never saw their example) or "
        "labels (no ranking: negatives are exactly the tokens where a record differs from its meta.clean_completion; "
        "the oracle of a benchmark, or your own labelled errors; rho and negative_below are unused)."
    )
    negative_below: float | None = option(
        0.0, "Three-way split: negatives only where the ranked value (see rank_by) < this; see `neutral` for the "
        "other tokens. With rank_by reference, -2.3 = where the reference gives the token p < 0.1."
    )
    neutral: str = option(
        "learn", "With negative_below: tokens neither positive nor negative are ignored (weight 0) or learned."
    )
    unit: str = option(
        "token", "token: each token keeps its polarity. example: an example with any negative token is dropped whole "
        "(all its tokens ignored), every other example learned in full: example-level filtering, the baseline that "
        "token-level forgetting has to beat (train it with objective ignore)."
    )

    def validate(self) -> None:
        if not (isinstance(self.rho, int | float) and 0.0 <= self.rho <= 1.0):
            raise ForgetuneError(f"rho must be in [0, 1], got {self.rho}: pass e.g. --rho 0.7")
        for name, allowed in (("granularity", ("global", "sequence", "batch")),
                              ("rank_by", ("difference", "reference", "labels")), ("unit", ("token", "example")),
                              ("neutral", ("ignore", "learn"))):
            _one_of(name, getattr(self, name), allowed)
        if self.negative_below is not None and not math.isfinite(self.negative_below):
            raise ForgetuneError(f"negative_below must be a finite number, got {self.negative_below}")


@dataclass
class TrainConfig:
    objective: str = option(
        "forget-npo", "Training objective: a registered name (sft, ignore, forget, forget-unlikelihood, forget-npo, "
        "forget-constrained, loss-truncation, ...); its settings are the flags marked with it."
    )
    objective_args: dict[str, Any] = field(default_factory=dict, metadata={"help": (
        "The objective's own settings, as each objective's file declares them (forgetune.objectives): flags and keys "
        "of this section like any other, e.g. --lambda-max, --npo-beta.")})
    learning_rate: float = option(5e-5, "Peak learning rate (AdamW).")
    lr_scheduler: str = option("linear", "transformers learning-rate schedule name.")
    warmup_ratio: float = option(0.0, "Fraction of steps spent warming up the learning rate.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    epochs: float = option(2.0, "Training epochs.")
    max_steps: int = option(-1, "If > 0, stop after this many optimizer steps (overrides epochs).")
    batch_size: int = option(16, "Examples per device per step.")
    grad_accum: int = option(1, "Gradient accumulation steps.")
    max_grad_norm: float = option(1.0, "Gradient clipping norm (the forgetting term needs it on).")
    group_by_length: bool = option(
        False, "Batches of examples of similar length (little padding; transformers' group_by_length). It changes the "
        "order the examples are seen in, so results differ from the default random order: off by default."
    )
    share_prefix: bool = option(
        True, "Run the tokens every example of a batch starts with (a chat template's system prompt, a shared "
        "instruction) once per batch instead of once per example, into a KV cache the examples continue from: the "
        "same loss and gradients up to float rounding, faster when the shared start is long (the arith bench: "
        "docs/performance.md). Off by itself under gradient checkpointing, FSDP and DeepSpeed."
    )
    padding_free: bool = option(
        True, "Run a batch's examples packed end to end in one row, each token attending to its own example only (a "
        "custom attention mask), so no padding token is computed: the same loss and gradients up to float rounding, "
        "and the same batches as padded. Only where it is cheaper: packing makes each token attend over the whole "
        "packed row, which costs more than the padding it saves on long examples (docs/performance.md). SDPA and "
        "eager attention; off by itself with FSDP and DeepSpeed."
    )
    bf16: bool = option(
        False, "Mixed precision: float32 weights and optimiser, matmuls in bfloat16 autocast (transformers' bf16). "
        "Faster where bfloat16 matmuls are: GPUs, and CPUs with AMX (there with --attn-implementation eager: "
        "PyTorch's CPU SDPA backward is slow in bfloat16; docs/performance.md). Results differ slightly from float32. "
        "With --dtype auto on a GPU the weights are bfloat16 anyway."
    )
    logging_steps: int = option(5, "Log losses every N steps.")
    save_steps: int = option(0, "If > 0, checkpoint every N steps so an interrupted stage resumes.")
    max_negative_term: float | None = option(
        100.0, "Stop training (keeping the last checkpoint) when a batch's mean negative term exceeds this in "
        "magnitude, in nats: beyond ~87 a float32 probability underflows and the forgetting only pushes logits "
        "apart. 'none': no bound. A non-finite loss always stops training."
    )
    seed: int = option(42, "Seed of data order, subsets, folds and initialisation.")
    eval_data: str | None = option(
        None, "Held-out clean records (any data format) scored every eval_steps during training: eval_loss, the mean "
        "CE of their response tokens, in log_history.json, the trackers and the report."
    )
    eval_steps: int = option(0, "With eval_data: evaluate every N optimiser steps (0: every logging_steps).")
    eval_answers: str | None = option(
        None, "With eval_data: also answer its prompts greedily at every evaluation and log eval_exact_match, the "
        "answers compared this way: last-number, after-####, first-line, exact or contains (as `forgetune eval "
        "--extract`). Off by default: generation costs far more than the eval loss."
    )
    eval_max_new_tokens: int = option(64, "With eval_answers: tokens generated per answer.")
    load_best_model_at_end: bool = option(
        False, "With eval_data: save the checkpoint with the lowest eval_loss as model/ (checkpoints are kept at every "
        "evaluation, save_total_limit of them)."
    )
    save_total_limit: int = option(1, "Checkpoints kept while training (with load_best_model_at_end, the best too).")
    report_to: str = option(
        "none", "Trackers that get every logged step (the objective's terms included), besides log_history.json: none, "
        "or a comma list of transformers' report_to names (tensorboard, wandb, trackio, mlflow, ...). tensorboard "
        "writes STAGE/tensorboard/ inside the run (pip install 'forgetune[track]')."
    )
    run_name: str | None = option(None, "Run name the trackers show (default: the stage's folder, e.g. myrun/train).")

    def validate(self) -> None:
        for name in ("learning_rate", "weight_decay", "max_grad_norm"):
            at_least(name, getattr(self, name))
        if self.max_negative_term is not None and not self.max_negative_term > 0:
            raise ForgetuneError(f"max_negative_term must be > 0 (or none: no bound), got {self.max_negative_term}")
        if self.save_steps < 0:
            raise ForgetuneError(f"save_steps must be >= 0 (0: no checkpoints), got {self.save_steps}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ForgetuneError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        for name in ("logging_steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ForgetuneError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_steps < 0 or self.save_total_limit < 1:
            raise ForgetuneError(f"eval_steps must be >= 0 and save_total_limit >= 1, got {self.eval_steps} and "
                                 f"{self.save_total_limit}")
        if self.eval_answers is not None:
            from forgetune.metrics.accuracy import MODES

            _one_of("eval_answers", self.eval_answers, MODES)
            if not self.eval_data:
                raise ForgetuneError("eval_answers needs eval_data: pass --eval-data FILE of held-out records")
        if self.load_best_model_at_end and not self.eval_data:
            raise ForgetuneError("load_best_model_at_end needs eval_data: pass --eval-data FILE of held-out records")
        from transformers import SchedulerType

        _one_of("lr_scheduler", self.lr_scheduler, [s.value for s in SchedulerType], "unknown lr_scheduler")


@dataclass
class GenerateConfig:
    prompts: str | None = option(None, "File of prompts (same formats as data); default: the first few corpus prompts.")
    num_prompts: int = option(5, "How many prompts to answer when none are given.")
    max_new_tokens: int = option(64, "Tokens to generate per answer (greedy).")
    compare_base: bool = option(False, "Also answer with the base model, side by side.")

    def validate(self) -> None:
        """Nothing to check: any prompts file is read (and checked) when generating."""


@dataclass
class UnlearnConfig:
    """`forgetune unlearn`: the forget / retain sets and the method's knobs (the optimiser is the train section's)."""

    forget: str | None = option(None, "Forget set: records whose responses the model must unlearn (any data format).")
    retain: str | None = option(None, "Retain set: the utility to keep (needed by every method with a retain term).")
    method: str = option("npo", "Unlearning method: a registered name (ga, graddiff, npo, simnpo, wga, constrained, "
                                "constrained-surgery, l1sparse, ...; docs/unlearning.md); its settings are the flags "
                                "marked with it.")
    forget_loss: str = option("npo", "Forget term inside constrained, constrained-surgery and l1sparse (its settings "
                                     "apply too).")
    method_args: dict[str, Any] = field(default_factory=dict, metadata={"help": (
        "The method's own settings (and its forget loss's), as each method's file declares them "
        "(forgetune.unlearning): flags and keys of this section like any other, e.g. --beta, --retain-weight.")})
    prune: float = option(0.0, "Magnitude-prune this fraction of the linear weights first; they stay 0.")
    tokens: str = option(
        "all", "all: every forget response token is forgotten; scored: only the top --token-fraction by "
        "CE_token_reference - CE_model (the rest of each forget example is kept like retain data)."
    )
    token_reference: str | None = option(
        None, "--tokens scored: a model that does not know the forget set (e.g. fine-tuned on retain data only)."
    )
    token_fraction: float = option(0.5, "--tokens scored: fraction of forget tokens that get the forgetting term.")
    holdout: str | None = option(
        None, "Stopping rule: data of the forget set's kind that the model never trained on. Unlearning stops once the "
        "forget set's mean NLL reaches the holdout's (both under the current model, every --stop-every steps), where "
        "a loss-based membership attack can no longer tell forgotten from never seen; --epochs / --max-steps cap it."
    )
    stop_every: int = option(1, "--holdout: check the stopping rule every N steps.")

    def validate(self) -> None:
        if self.tokens not in ("all", "scored"):
            raise ForgetuneError(f"unlearn: --tokens must be all or scored, got {self.tokens!r}")
        if self.tokens == "scored" and not self.token_reference:
            raise ForgetuneError(
                "unlearn: --tokens scored needs --token-reference DIR, a model that does not know the forget set "
                "(e.g. the base model, or one fine-tuned on the retain data)"
            )
        if not 0.0 < self.token_fraction <= 1.0:
            raise ForgetuneError(f"unlearn: --token-fraction must be in (0, 1], got {self.token_fraction}")
        if not 0.0 <= self.prune < 1.0:
            raise ForgetuneError(f"unlearn: --prune must be in [0, 1), got {self.prune}")
        if self.stop_every < 1:
            raise ForgetuneError(f"unlearn: --stop-every must be >= 1, got {self.stop_every}")


@dataclass
class RunConfig:
    output: str | None = option(None, "Run directory; every stage reads and writes there.")
    preset: str | None = option(None, "Named preset applied before YAML and flags (see forgetune.config.PRESETS).")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)

    def to_dict(self) -> dict[str, Any]:
        """Sections of {field: value}, a loss's declared settings among its section's fields (as flags and YAML
        keys are): the form config.yaml is written and read in."""
        out = dataclasses.asdict(self)
        for section, (holder, loss_field, _) in LOSS_SETTINGS.items():
            fields, settings = out[section], out[section].pop(holder)
            at = list(fields).index(loss_field) + 1  # the loss's settings right after its name
            out[section] = dict([*list(fields.items())[:at], *settings.items(), *list(fields.items())[at:]])
        return out

    def validate(self, given: Collection[str] | None = None) -> RunConfig:
        """Each section checks its own fields, each loss its declared settings (`settle_loss_settings`: `given`
        names the settings the user set); the one check across sections (steps of both trainings) is here."""
        for name in SECTIONS:
            getattr(self, name).validate()
        settle_loss_settings(self, given)
        t, r = self.train, self.reference
        for epochs, max_steps, flag in ((t.epochs, t.max_steps, "epochs"),
                                        (r.reference_epochs, r.reference_max_steps, "reference_epochs")):
            if max_steps <= 0 and not (math.isfinite(epochs) and epochs > 0):  # else 0 steps: the base model, "trained"
                raise ForgetuneError(f"{flag} must be > 0 (or set {flag.replace('epochs', 'max_steps')} > 0), "
                                     f"got {epochs}")
        return self


SECTIONS: dict[str, type] = {
    f.name: f.default_factory for f in dataclasses.fields(RunConfig) if f.default_factory is not dataclasses.MISSING
}
TOP_LEVEL = ("output", "preset")

# Sections whose settings include those each registered loss declares (its `Settings`): section -> (the field that
# holds them, the field that names the loss, the registry's kind).
LOSS_SETTINGS: dict[str, tuple[str, str, str]] = {
    "train": ("objective_args", "objective", "objective"),
    "unlearn": ("method_args", "method", "unlearning method"),
}


def loss_registry(section: str) -> Any:
    """The registry of the losses `section` chooses from (imported here, when first needed: they import torch)."""
    from forgetune import objectives, unlearning

    return {"train": objectives, "unlearn": unlearning}[section]


def loss_setting_index(section: str) -> dict[str, FieldInfo]:
    """Every setting a registered loss of `section` declares, by name. Losses sharing a setting share its flag; its
    help says which losses read it, and where their defaults differ, that each has its own."""
    registry, holder = loss_registry(section), LOSS_SETTINGS[section][0]
    readers: dict[str, list[tuple[str, FieldInfo]]] = {}
    for name in registry.names():
        for info in field_infos(registry.get(name).Settings, section, holder):
            readers.setdefault(info.name, []).append((name, info))
    index = {}
    for key, entries in readers.items():
        if len({info.type for _, info in entries}) > 1:
            raise RuntimeError(f"loss setting {key} is declared with two types")
        helps: dict[str, list[str]] = {}
        defaults: dict[str, list[str]] = {}
        for name, info in entries:
            helps.setdefault(info.help.rstrip("."), []).append(name)
            defaults.setdefault(repr(info.default), []).append(name)
        text = "; ".join(f"[{', '.join(names)}] {help_text}" for help_text, names in helps.items()) + "."
        default = entries[0][1].default if len(defaults) == 1 else "; ".join(
            f"{value} for {', '.join(names)}" for value, names in defaults.items())
        index[key] = FieldInfo(section, key, entries[0][1].type, default, text, holder,
                               any(info.optional for _, info in entries))
    return index


def settle_loss_settings(cfg: RunConfig, given: Collection[str] | None = None) -> None:
    """Replace each loss section's settings by the chosen loss's full, checked settings (its defaults filled in).
    A setting the loss does not take is an error if the user set it (`given`; None: every setting counts as set)
    and dropped if a lower layer did (a preset or defaults written for another loss)."""
    for section, (holder, loss_field, kind) in LOSS_SETTINGS.items():
        values, registry = getattr(cfg, section), loss_registry(section)
        cls = registry.get(getattr(values, loss_field))
        context = {"forget_loss": values.forget_loss} if section == "unlearn" else {}
        settings, accepted = dict(getattr(values, holder)), cls.setting_names(**context)
        if given is not None:  # a lower layer's None for a setting that takes none: an earlier version's "default"
            index = loss_setting_index(section)
            settings = {k: v for k, v in settings.items() if k in given or v is not None or index[k].optional}
        for key in sorted(set(settings) - accepted):
            if given is not None and key not in given:
                del settings[key]
                continue
            takers = [n for n in registry.names() if key in registry.get(n).setting_names()]
            raise ForgetuneError(
                f"--{key.replace('_', '-')} does not apply to {kind} {cls.name} (its settings: "
                f"{', '.join(sorted(accepted)) or 'none'}); it is a setting of {', '.join(takers)}"
            )
        setattr(values, holder, cls.settings_for(settings, **context))

# The paper's exact recipe (arXiv 2508.04329), kept for comparison with forgetune's defaults.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "reference": {"cross_fit": 1, "reference_fraction": 0.3},
        "partition": {"rho": 0.7, "granularity": "global", "rank_by": "difference", "negative_below": None,
                      "neutral": "ignore"},
        "train": {"objective": "forget", "lambda_max": 0.25, "lambda_min": 0.0, "max_grad_norm": 1.0,
                  "negative_mean": "negatives"},
    },
}


# The defaults with --reference-data (a reference trained on trusted data), measured in docs/results.md section 0:
# such a reference never saw the corpus's errors, so they surprise it (-CE_ref finds them: token AUROC 0.98 on the
# systematic arith benchmark), while the base finds them as surprising (the difference score: 0.46). Dropping the
# tokens it gives p < 0.1 did as well as forgetting them (forget-npo) on arith and better on numwords: dropped.
TRUSTED_REFERENCE_DEFAULTS: dict[str, dict[str, Any]] = {
    "partition": {"rank_by": "reference", "negative_below": -2.3},
    "train": {"objective": "ignore"},
}


# Train settings that change where the logs go or what is kept on the way, not the result: left out of every stage's
# cache key.
NOT_IN_RESULT = ("report_to", "run_name", "save_total_limit")


def result_settings(train: TrainConfig, leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """The train section's settings that decide a stage's result (its cache key's share)."""
    return {k: v for k, v in dataclasses.asdict(train).items() if k not in (*NOT_IN_RESULT, *leave_out)}


# `forgetune unlearn`'s own train-section defaults (explicit settings win): a small constant learning rate for a few
# passes over the forget set, logged every step (open-unlearning's scale; the stopping rule reads every step).
UNLEARN_DEFAULTS: dict[str, dict[str, Any]] = {
    "train": {"learning_rate": 1e-5, "lr_scheduler": "constant", "epochs": 5.0, "batch_size": 4, "logging_steps": 1,
              "max_negative_term": None},
}


# The transformers / TRL spelling of a field, where it differs from forgetune's: a TRL user's flags
# (--num_train_epochs 3, --per_device_train_batch_size 8) and YAML keys work as they are. Every field also answers to
# its underscore spelling (--learning_rate, as transformers' HfArgumentParser writes it).
ALIASES: dict[str, str] = {
    "model_name_or_path": "model",
    "dataset_name": "data",
    "output_dir": "output",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "lr_scheduler_type": "lr_scheduler",
    "torch_dtype": "dtype",
    "use_peft": "lora",
}


def canonical(key: str) -> str:
    """A config key as forgetune's field name: a TRL / transformers alias or a dashed spelling mapped onto it."""
    key = key.replace("-", "_")
    return ALIASES.get(key, key)


def field_index() -> dict[str, FieldInfo]:
    """Every flag name (= field name) with its section and type: the config's fields and every registered loss's
    declared settings; names are unique across sections."""
    index: dict[str, FieldInfo] = {}
    infos = [i for i in field_infos(RunConfig, None) if i.name in TOP_LEVEL]
    infos += [i for section, cls in SECTIONS.items() for i in field_infos(cls, section)]
    infos += [i for section in LOSS_SETTINGS for i in loss_setting_index(section).values()]
    for info in infos:
        if info.name in index:
            raise RuntimeError(f"config field {info.name} defined twice")
        index[info.name] = info
    return index


def _coerce(value: Any, info: FieldInfo, source: str) -> Any:
    if value is None:
        return None
    kind = info.type
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    elif kind is float and isinstance(value, str):  # YAML 1.1 reads `1e-5` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    elif kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif kind is str and isinstance(value, str | int | float):
        return str(value)
    raise ForgetuneError(f"{source}: field '{info.name}' must be {kind.__name__}, got {value!r}")


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any], source: str) -> RunConfig:
    """Set fields from a flat {field: value} or sectioned {section: {field: value}} mapping."""
    index = field_index()
    for key, value in overrides.items():
        key = key if key in SECTIONS else canonical(key)
        if key in SECTIONS and value is None and source != "command line":
            continue  # an empty YAML section (every key commented out)
        if key in SECTIONS and isinstance(value, dict):  # a section (`data:` is also a field: the corpus path)
            for sub_key, sub_value in value.items():
                sub_key = canonical(sub_key)
                info = index.get(sub_key)
                if info is None or info.section != key:
                    raise ForgetuneError(f"{source}: unknown field '{sub_key}' in section '{key}'")
                _set(cfg, info, sub_value, source)
            continue
        if key in SECTIONS and key not in index:
            raise ForgetuneError(f"{source}: section '{key}' must be a mapping of field: value, got {value!r}")
        if key not in index:
            raise ForgetuneError(f"{source}: unknown config field '{key}' (see forgetune run --help)")
        _set(cfg, index[key], value, source)
    return cfg


def _set(cfg: RunConfig, info: FieldInfo, value: Any, source: str) -> None:
    target = cfg if info.section is None else getattr(cfg, info.section)
    if info.holder:
        getattr(target, info.holder)[info.name] = _coerce(value, info, source)
    else:
        setattr(target, info.name, _coerce(value, info, source))


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ForgetuneError(f"{path}: is a directory, not a YAML config file")
    if not path.is_file():
        raise ForgetuneError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise ForgetuneError(f"{path}:{line}: not valid UTF-8 text; re-encode the file as UTF-8") from None
    except OSError as e:
        raise ForgetuneError(f"{path}: cannot read the config file ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ForgetuneError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ForgetuneError(f"{path}: a config file must be a mapping of sections")
    return data


def _given(layers: list[dict[str, Any]]) -> set[str]:
    """Field names set explicitly in any layer (flat {field: value} or sectioned {section: {field: value}})."""
    names: set[str] = set()
    for layer in layers:
        for key, value in layer.items():
            names.update(map(canonical, value) if key in SECTIONS and isinstance(value, dict) else (canonical(key),))
    return names


def resolve(yaml_path: str | Path | None = None, flags: dict[str, Any] | None = None,
            base: dict[str, Any] | None = None) -> RunConfig:
    """defaults < trusted-reference defaults (with reference_data) < base (e.g. the demo's settings) < preset < YAML
    < flags, then validation."""
    flags = dict(flags or {})
    file_values = load_yaml(yaml_path) if yaml_path else {}
    preset = flags.get("preset") or file_values.get("preset")
    cfg = apply_overrides(RunConfig(), base or {}, "base settings")
    if preset:
        if preset not in PRESETS:
            raise ForgetuneError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
        apply_overrides(cfg, PRESETS[preset], f"preset {preset}")
    apply_overrides(cfg, file_values, str(yaml_path))
    apply_overrides(cfg, flags, "command line")
    if cfg.reference.reference_data or cfg.reference.reference_model:  # a reference that never saw the corpus
        given = _given([base or {}, PRESETS.get(preset, {}), file_values, flags])
        apply_overrides(cfg, {section: {k: v for k, v in fields.items() if k not in given}
                              for section, fields in TRUSTED_REFERENCE_DEFAULTS.items()}, "trusted-reference defaults")
    return cfg.validate(given=_given([file_values, flags]))


def from_dict(data: dict[str, Any]) -> RunConfig:
    """A run's saved config.yaml. Earlier versions saved every loss's settings, not the chosen one's alone: the
    others are dropped, as a preset's would be."""
    return apply_overrides(RunConfig(), data, "saved config").validate(given=())


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
