"""A transformers.Trainer whose loss is the configured objective over per-token CE of response tokens.

One forward pass; the per-token labels (polarity, base CE) arrive in the batch, so a forgetting step costs what an
SFT step costs. The trainer never looks at which objective it runs.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_pt_utils import LengthGroupedSampler

from forgetune.config import TrainConfig
from forgetune.data.collator import Collator
from forgetune.errors import ForgetuneError
from forgetune.objectives import Objective, TokenBatch
from forgetune.objectives.base import COUNTS, batch_counts
from forgetune.processes import process_state
from forgetune.scoring.token_logps import response_token_ce, target_mask, training_response_token_ce

log = logging.getLogger(__name__)


class TrainingDiverged(ForgetuneError):
    """Raised inside a training step, before its gradient is applied: the weights are still the last good ones."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"step {step}: {reason}")
        self.step, self.reason = step, reason


def divergence(loss: torch.Tensor, metrics: dict[str, Any], max_negative_term: float | None) -> str | None:
    """Why a micro-batch's loss must not be applied (a non-finite loss, an exploding negative term), else None."""
    value = float(loss.detach())
    if not math.isfinite(value):
        return (f"the loss is {value}; lower --learning-rate, keep --max-grad-norm on, and check the run's "
                "score files")
    neg = metrics.get("neg_term")
    neg = None if neg is None else float(neg)
    if neg is not None and max_negative_term is not None and not abs(neg) <= max_negative_term:
        return (f"the negative term reached {neg:.4g}, beyond --max-negative-term {max_negative_term:g}; lower "
                "--lambda-max, use a bounded objective (forget-npo, forget-unlikelihood) or raise the bound")
    return None


def format_logs(logs: dict[str, Any]) -> str:
    """One Trainer log record as `step 5: loss 1.234, ...`, numbers to 4 significant digits (transformers prints a
    dict of formatted strings)."""
    shown = {k: v for k, v in logs.items() if k not in ("total_flos", "step")}
    text = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
    return f"step {logs['step']}: {text}" if "step" in logs else text


class RoundedProgress(ProgressCallback):
    """transformers' progress bar, its log lines written by `format_logs`."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            self.training_bar.write(format_logs({"step": state.global_step, **logs}))


def example_lengths(dataset: Any) -> list[int]:
    """Token count of each training example: a feature's input_ids, or an unlearning item's forget row's."""
    forget_rows = getattr(dataset, "forget", None)
    rows = forget_rows if forget_rows is not None else dataset
    return rows.lengths.tolist() if hasattr(rows, "lengths") else [len(f["input_ids"]) for f in rows]


def flat_token_batch(inputs: dict[str, torch.Tensor], sequence: torch.Tensor | None = None) -> TokenBatch:
    """A collated batch's per-position fields, flattened to one entry per response token in (row, position) order:
    the order of `response_token_ce`, so entry i of each field belongs to CE i. `sequence` (B, T): the example of
    each position where a row holds several (packed, padding-free); by default each row is one."""
    mask = target_mask(inputs["labels"])
    if sequence is None:
        sequence = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)
    return TokenBatch(
        polarity=inputs["polarity"][mask] if "polarity" in inputs else None,
        base_ce=inputs["base_ce"][mask] if "base_ce" in inputs else None,
        seq=sequence[mask],
    )


class ObjectiveLossMixin:
    """Every loss (SFT objective or unlearning method) through one protocol: `objective(ce, tokens, progress)`; an
    update rule that declares `writes_gradients` gets `backward(parameters, ce, tokens, progress)` instead.

    Mixed into a transformers Trainer (forgetune's own, or TRL's SFTTrainer: `forgetune.integrations.trl`); the
    trainer supplies `token_batch(model, inputs) -> (ce, tokens, outputs)`, its one forward pass."""

    def __init__(self, *args: Any, objective: Objective, max_negative_term: float | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.max_negative_term = max_negative_term
        # A loss exact under accumulation is normalised by the whole step's counts (`get_batch_samples`): the Trainer
        # must not divide it by the accumulation steps again. Any other loss is a micro-batch mean it divides.
        self.loss_is_scaled_for_ga = objective.exact_under_accumulation
        self.model_accepts_loss_kwargs = False
        self._objective_metrics: dict[str, list[Any]] = defaultdict(list)
        self._step_totals: dict[str, torch.Tensor] | None = None

    def token_batch(self, model, inputs) -> tuple[torch.Tensor, TokenBatch, Any]:
        raise NotImplementedError

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The micro-batches of one optimiser step, and (for a loss exact under accumulation, over several of them)
        their token counts, which every micro-batch's loss then divides by: K micro-batches of B add up to the loss
        of one batch of K * B, as transformers normalises its own loss by the accumulated token count."""
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._step_totals = None
        if self.objective.exact_under_accumulation and len(batches) > 1:
            counts = [batch_counts(target_mask(b["labels"]), b.get("polarity")) for b in batches]
            self._step_totals = {key: sum(c[key] for c in counts).to(device) for key in COUNTS}
        return batches, num_items

    @property
    def progress(self) -> float:
        return self.state.global_step / max(self.state.max_steps, 1)

    def objective_loss(self, model, inputs) -> tuple[torch.Tensor, Any]:
        """The training loss of one micro-batch, checked for divergence before it reaches the weights."""
        ce, tokens, outputs = self.token_batch(model, inputs)
        tokens.totals = self._step_totals
        try:
            loss, metrics = self.objective(ce, tokens, self.progress)
        except ValueError as e:  # e.g. constrained's log of a NaN forget loss: one line, not a traceback
            raise TrainingDiverged(self.state.global_step + 1, str(e)) from None
        self.check_divergence(loss, metrics)
        self.record(metrics)
        return loss, outputs

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not self.objective.writes_gradients:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self._prepare_inputs(inputs)
        ce, tokens, _ = self.token_batch(model, inputs)
        tokens.totals = self._step_totals
        try:
            metrics = self.objective.backward(list(model.parameters()), ce, tokens, self.progress)
        except ValueError as e:
            raise TrainingDiverged(self.state.global_step + 1, str(e)) from None
        loss = torch.as_tensor(metrics["forget_term"], device=self.args.device)
        self.check_divergence(loss, metrics)
        self.record(metrics)
        return loss

    def record(self, metrics: dict[str, Any]) -> None:
        """Kept as they come (tensors detached, no sync); numbers only when the Trainer logs."""
        for key, value in metrics.items():
            self._objective_metrics[key].append(value.detach() if isinstance(value, torch.Tensor) else value)

    def check_divergence(self, loss: torch.Tensor, metrics: dict[str, Any]) -> None:
        """Stop before a diverged loss reaches the weights; every process stops together (no one left waiting)."""
        reason = divergence(loss, metrics, self.max_negative_term)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(torch.tensor([float(reason is not None)], device=loss.device), "sum")
            if reason is None and flag.item() > 0:
                reason = "another process diverged (its own line says why)"
        if reason is not None:
            raise TrainingDiverged(self.state.global_step + 1, reason)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for key, values in self._objective_metrics.items():
            numbers = [float(v) for v in values]
            logs[key] = sum(numbers) / len(numbers) if not key.startswith("tokens_") else sum(numbers)
        self._objective_metrics.clear()
        super().log(logs, start_time)


@dataclass
class AnswerCheck:
    """Held-out prompts answered greedily at every evaluation (--eval-answers): eval_exact_match."""

    prompts: list[list[dict[str, str]]]
    references: list[str]
    mode: str
    max_new_tokens: int = 64

    def exact_match(self, model, tokenizer) -> float:
        from forgetune.generation import generate_answers
        from forgetune.metrics.accuracy import exact_match

        return exact_match(generate_answers(model, tokenizer, self.prompts, self.max_new_tokens), self.references,
                           self.mode)


class ObjectiveTrainer(ObjectiveLossMixin, Trainer):
    """forgetune's trainer: its features and collator carry the per-token labels (`forgetune.data.collator`).
    `answers`: held-out prompts answered at every evaluation, their exact match logged beside eval_loss."""

    def __init__(self, *args: Any, answers: AnswerCheck | None = None, share_prefix: bool = False,
                 padding_free: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.answers = answers
        self.share_prefix = share_prefix
        self.padding_free = padding_free

    def _get_train_sampler(self, train_dataset=None):
        """transformers' length-grouped sampler, told each example's length (unlearning's items hold a forget row and
        a random retain row: the forget row's length decides)."""
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                    lengths=example_lengths(dataset))

    def token_batch(self, model, inputs) -> tuple[torch.Tensor, TokenBatch, Any]:
        """One forward pass: the flat CE of the batch's response tokens (no full-vocabulary logits: see
        `training_response_token_ce`), their per-token labels (aligned) and the model's outputs."""
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:  # sharded head: only the model's own forward has it
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            ce = response_token_ce(outputs.logits, inputs["labels"])
        else:
            ce, outputs = training_response_token_ce(model, inputs, self.accelerator.unwrap_model(model),
                                                     share_prefix=self.share_prefix,
                                                     padding_free=self.padding_free)
        return ce, flat_token_batch(inputs), outputs

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """An evaluation's record gets eval_exact_match too: every process answers every prompt with its own copy of
        the weights (the same greedy answers), so no process waits on another."""
        if self.answers is not None and "eval_loss" in logs:
            logs["eval_exact_match"] = self.answers.exact_match(self.model, self.processing_class)
        super().log(logs, start_time)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            loss, outputs = self.objective_loss(model, inputs)
        else:  # evaluation (--eval-data): the held-out responses' mean CE, whatever the objective
            ce, _, outputs = self.token_batch(model, inputs)
            loss = ce.mean() if ce.numel() else ce.sum()
        return (loss, outputs) if return_outputs else loss


def fit(
    model: torch.nn.Module,
    tokenizer,
    features: Any,
    objective: Any,
    cfg: TrainConfig,
    work_dir: Path,
    *,
    key: str,
    epochs: float | None = None,
    max_steps: int | None = None,
    collator: Any = None,
    callbacks: list[Any] | None = None,
    eval_features: Any = None,
    answers: AnswerCheck | None = None,
) -> tuple[torch.nn.Module, list[dict[str, float]], dict[str, torch.Tensor] | None]:
    """Train in place: (model, log history, full weights when training was sharded, else None). Checkpoints go to
    work_dir/checkpoints and are resumed from only if they were written under the same stage key (same data and
    config); stale ones are deleted. `collator`, `callbacks`: for batches of other rows
    (unlearning's forget + retain rows). `eval_features`: held-out rows scored every eval_steps (eval_loss: their
    mean response CE); with load_best_model_at_end the best checkpoint's weights come back. `answers`: their prompts,
    answered at each evaluation too (eval_exact_match)."""
    ckpt_dir = work_dir / "checkpoints"
    key_file = ckpt_dir / "stage_key"
    state = process_state()
    stale = ckpt_dir.is_dir() and (not key_file.is_file() or key_file.read_text() != key)
    partial = [] if stale or not ckpt_dir.is_dir() else [
        p for p in ckpt_dir.glob("checkpoint-*") if p.is_dir() and not (p / TRAINER_STATE_NAME).is_file()
    ]
    state.wait_for_everyone()  # every process has looked before the main one deletes
    if state.is_main_process:
        if stale:
            shutil.rmtree(ckpt_dir)
        for path in partial:  # cut short by a kill while being written: cannot be resumed from
            log.warning("%s: removing an incomplete checkpoint (interrupted while being saved)", path)
            shutil.rmtree(path, ignore_errors=True)
    state.wait_for_everyone()
    dtype = next(model.parameters()).dtype
    on_gpu = torch.cuda.is_available()
    trackers = reporters(cfg.report_to)
    callbacks = list(callbacks or [])
    if "tensorboard" in trackers and state.is_main_process:
        callbacks.append(tensorboard_callback(work_dir / "tensorboard"))
    evaluate = eval_features is not None
    eval_steps = cfg.eval_steps or cfg.logging_steps
    keep_best = evaluate and cfg.load_best_model_at_end
    save_steps = eval_steps if keep_best else cfg.save_steps  # the best is picked among the evaluated checkpoints
    try:
        args = TrainingArguments(
            output_dir=str(ckpt_dir),
            per_device_train_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.grad_accum,
            learning_rate=cfg.learning_rate,
            lr_scheduler_type=cfg.lr_scheduler,
            warmup_steps=cfg.warmup_ratio,
            weight_decay=cfg.weight_decay,
            num_train_epochs=cfg.epochs if epochs is None else epochs,
            max_steps=cfg.max_steps if max_steps is None else max_steps,
            max_grad_norm=cfg.max_grad_norm,
            logging_steps=cfg.logging_steps,
            save_strategy="steps" if save_steps > 0 else "no",
            save_steps=max(save_steps, 1),
            save_total_limit=cfg.save_total_limit,
            eval_strategy="steps" if evaluate else "no",
            eval_steps=eval_steps if evaluate else None,
            per_device_eval_batch_size=cfg.batch_size,
            load_best_model_at_end=keep_best,
            metric_for_best_model="eval_loss" if keep_best else None,
            greater_is_better=False if keep_best else None,
            label_names=["labels"],
            seed=cfg.seed,
            data_seed=cfg.seed,
            report_to=[t for t in trackers if t != "tensorboard"] or "none",  # tensorboard: our callback, our folder
            run_name=cfg.run_name or "/".join(work_dir.parts[-2:]),  # e.g. myrun/train
            remove_unused_columns=False,
            train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
            dataloader_pin_memory=on_gpu,
            use_cpu=not on_gpu,  # a CPU state: several launched CPU processes then form one gloo group
            bf16=cfg.bf16 or (dtype == torch.bfloat16 and on_gpu),
            disable_tqdm=not log.isEnabledFor(logging.INFO),
        )
    except ValueError as e:
        raise ForgetuneError(f"training arguments: {str(e).splitlines()[0]}") from None
    trainer = ObjectiveTrainer(
        model=model,
        args=args,
        train_dataset=features,
        eval_dataset=eval_features,
        data_collator=collator or Collator(tokenizer.pad_token_id),
        callbacks=callbacks,
        processing_class=tokenizer,
        objective=objective,
        max_negative_term=cfg.max_negative_term,
        answers=answers,
        share_prefix=cfg.share_prefix,
        padding_free=cfg.padding_free,
    )
    if args.disable_tqdm:
        trainer.remove_callback(PrinterCallback)  # quiet: no per-step log lines either
    else:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(RoundedProgress())
    if args.save_strategy != "no" and trainer.is_world_process_zero():
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        key_file.write_text(key)
    resume = last_checkpoint(ckpt_dir)
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except TrainingDiverged as e:  # the checkpoints stay: only a finished training removes them
        kept = last_checkpoint(ckpt_dir)
        where = f"the last good checkpoint is kept: {kept}" if kept else "no checkpoint was saved before it"
        raise ForgetuneError(f"{work_dir}: training diverged at step {e.step}: {e.reason}; {where}") from None
    # Sharded training (FSDP, DeepSpeed ZeRO-3) leaves each process a shard: gather full weights for the main
    # process to save (a collective call, so every process makes it).
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    weights = trainer.accelerator.get_state_dict(trainer.model_wrapped) if sharded else None
    state.wait_for_everyone()
    if state.is_main_process:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return trainer.model, trainer.state.log_history, weights


def reporters(report_to: str) -> list[str]:
    """`--report-to` as transformers' names; an unknown name is one line."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    names = [n.strip() for n in report_to.split(",") if n.strip() and n.strip() != "none"]
    unknown = [n for n in names if n not in INTEGRATION_TO_CALLBACK]
    if unknown:
        raise ForgetuneError(f"unknown --report-to {', '.join(unknown)}; choose none or a comma list of "
                             f"{', '.join(sorted(INTEGRATION_TO_CALLBACK))}")
    return names


def tensorboard_callback(log_dir: Path) -> TrainerCallback:
    """transformers' TensorBoard callback writing into the run (its default folder sits under the checkpoints, which
    a finished training deletes)."""
    from transformers.integrations import TensorBoardCallback

    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ForgetuneError("--report-to tensorboard needs the tensorboard package: pip install 'forgetune[track]'"
                             ) from None
    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir)))


def last_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint: transformers writes trainer_state.json last, so a checkpoint cut short by a
    kill has none and is passed over (transformers' own lookup would pick it by its number alone)."""
    done = [p for p in ckpt_dir.glob("checkpoint-*") if p.name[11:].isdigit() and (p / TRAINER_STATE_NAME).is_file()]
    return max(done, key=lambda p: int(p.name[11:]), default=None)
