"""`forgetune unlearn`: remove what a model learned from a forget set while keeping its utility on a retain set.

Each step sees a batch of forget examples and as many retain examples drawn at random (open-unlearning's
ForgetRetainDataset: an epoch is one pass over the forget set, however large the retain set), in one forward pass.
Everything the method needs travels in the batch: the forget tokens' CE under the starting model (NPO's frozen
reference, computed once up front instead of keeping a second model in memory) and each token's polarity (-1 =
forget; +1 = retain data, or with `--tokens scored` a forget token kept like retain data). The trainer is the SFT
objectives' own: it calls the registered method through the same loss protocol without knowing which one it is.

Output folder::

    model/                  the unlearned model, a Hugging Face dir
    unlearn_config.yaml     the resolved config
    log_history.json        losses, forget / retain NLL, method metrics per logging step
    .done.json              run time, steps, final metrics (a rerun with the same inputs and config is skipped)

With `--holdout FILE` (data of the forget set's kind that the model never trained on) unlearning stops once the
forget set is as unlikely as that data: a fixed budget overshoots, and a forget set far *less* likely than unseen data
betrays its membership to a loss attack as much as a remembered one does.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from transformers import TrainerCallback

from forgetune import unlearning
from forgetune.config import ModelConfig, TrainConfig, option
from forgetune.data.collator import Collator, make_features
from forgetune.data.formats import Example, load_examples
from forgetune.errors import ForgetuneError
from forgetune.io import (
    DONE_MARKER,
    fingerprint_path,
    hash_obj,
    mark_done,
    read_json,
    stage_done,
    write_json,
    write_text,
)
from forgetune.models import (
    load_model,
    load_tokenizer,
    load_trainable,
    model_fingerprint,
    resolve_model_path,
    save_model,
)
from forgetune.processes import process_state
from forgetune.scoring.partition import partition_tokens
from forgetune.scoring.scorer import example_offsets, token_ce
from forgetune.trainer import fit

log = logging.getLogger(__name__)

# Method knobs that map onto constructor arguments of the same name (`retain_weight` is also constrained's w0).
KNOBS = ("beta", "delta", "retain_weight", "eps", "eta", "alpha", "retain_floor")


@dataclass
class UnlearnConfig:
    forget: str | None = option(None, "Forget set: records whose responses the model must unlearn (any data format).")
    retain: str | None = option(None, "Retain set: the utility to keep (needed by every method with a retain term).")
    output: str | None = option(None, "Output folder: model/ (a Hugging Face dir), unlearn_config.yaml, logs.")
    model: str | None = option(None, "Model to unlearn from (local HF dir). Default: the embedded SmolLM2-135M.")
    method: str = option("npo", f"Unlearning method: {', '.join(unlearning.names())}.")
    forget_loss: str = option("npo", "Forget term inside constrained, constrained-surgery and l1sparse.")
    beta: float | None = option(None, "NPO / SimNPO inverse temperature (default: the method's, 0.1 / 4.5).")
    delta: float | None = option(None, "SimNPO margin (default 0).")
    retain_weight: float | None = option(
        None, "Weight of the retain NLL (default: the method's; constrained: the start value w0 of its dual weight)."
    )
    eps: float | None = option(
        None, "constrained: allowed rise of log retain loss per step; constrained-surgery: of the retain loss per "
        "unit learning rate (default 0)."
    )
    eta: float | None = option(None, "constrained: step size of the retain weight's dual update (default 5).")
    retain_floor: float | None = option(
        None, "constrained: m_r in log(L_r - m_r) (default 0). -1 makes it log(1 + L_r), for retain data the model "
        "already fits (L_r near 0, where log L_r would scale the retain gradient by 1 / L_r and its per-batch noise "
        "would drive the dual weight)."
    )
    alpha: float | None = option(None, "l1sparse: start weight of the l1 penalty on theta - theta_0 (-> 0; 1e-4).")
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
    learning_rate: float = option(1e-5, "Learning rate (AdamW).")
    lr_scheduler: str = option("constant", "transformers learning-rate schedule name.")
    epochs: float = option(5.0, "Passes over the forget set.")
    max_steps: int = option(-1, "If > 0, stop after this many steps (overrides epochs).")
    batch_size: int = option(4, "Forget examples per step (each step adds as many retain examples).")
    max_grad_norm: float = option(1.0, "Gradient clipping norm (gradient ascent needs it).")
    save_steps: int = option(0, "If > 0, checkpoint every N steps so an interrupted run resumes.")
    seed: int = option(42, "Seed of data order and retain draws.")
    format: str = option("auto", "Record format: auto, chat, prompt-completion or alpaca.")
    max_length: int = option(512, "Truncate tokenised examples to this many tokens.")
    dtype: str = option("float32", "Weights dtype: float32 or bfloat16.")

    def validate(self) -> UnlearnConfig:
        for name, what in (("forget", "a file of the records to unlearn"), ("output", "a folder for the result")):
            if not getattr(self, name):
                raise ForgetuneError(f"unlearn: --{name} is required ({what})")
        for name in ("forget", "retain", "holdout"):
            path = getattr(self, name)
            if path and not Path(path).exists():
                raise ForgetuneError(f"{path}: file not found (--{name})")
        unlearning.get(self.method)
        unlearning.get(self.forget_loss)
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
        if self.dtype not in ("float32", "bfloat16"):
            raise ForgetuneError(f"unlearn: --dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.stop_every < 1:
            raise ForgetuneError(f"unlearn: --stop-every must be >= 1, got {self.stop_every}")
        if not (self.learning_rate > 0 and self.epochs > 0 and self.batch_size >= 1):
            raise ForgetuneError("unlearn: --learning-rate and --epochs must be > 0 and --batch-size >= 1")
        return self

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            objective=self.method, learning_rate=self.learning_rate, lr_scheduler=self.lr_scheduler,
            epochs=self.epochs, max_steps=self.max_steps, batch_size=self.batch_size,
            max_grad_norm=self.max_grad_norm, save_steps=self.save_steps, seed=self.seed, max_negative_term=None,
            logging_steps=1,
        )


def _accepted(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def build_method(cfg: UnlearnConfig, parameters: list[torch.nn.Parameter]) -> Any:
    """The registered method with the knobs that were set; a knob no part of the method takes is an error."""
    cls = unlearning.get(cfg.method)
    knobs = {k: getattr(cfg, k) for k in KNOBS if getattr(cfg, k) is not None}
    own = _accepted(cls)
    params = {k: v for k, v in knobs.items() if k in own}
    if "weight" in own and "retain_weight" in knobs:  # constrained: the retain term's start weight
        params["weight"] = knobs["retain_weight"]
    inner_slot = next((s for s in ("forget", "inner") if s in own), None)
    if inner_slot:
        params[inner_slot] = cfg.forget_loss
        # constrained / constrained-surgery own the retain term; l1sparse leaves it to the inner method
        owned = {"retain_weight"} if inner_slot == "forget" else set()
        shared = _accepted(unlearning.get(cfg.forget_loss)) - own - owned
        params.update({k: v for k, v in knobs.items() if k in shared})
    if "parameters" in own:
        params["parameters"] = parameters
    unused = set(knobs) - set(params) - ({"retain_weight"} if "weight" in params else set())
    if unused:
        flags = ", ".join("--" + k.replace("_", "-") for k in sorted(unused))
        raise ForgetuneError(
            f"unlearn: {flags} does not apply to --method {cfg.method} (forget loss {cfg.forget_loss})"
        )
    try:
        return cls(**params)
    except ValueError as e:
        raise ForgetuneError(f"unlearn: --method {cfg.method}: {e}") from None


def uses_retain(method: Any) -> bool:
    """Whether the method has a retain term (GA with retain_weight 0 does not; constrained forms always do)."""
    return getattr(getattr(method, "inner", method), "retain_weight", None) != 0


def unlearn_features(examples: list[Example], base_ce: np.ndarray | None = None,
                     forget: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Per-position `polarity` (-1: forget this token; +1: retain data, or a forget example's token kept like it) and
    `base_ce` (the starting model's CE, NPO's reference) spread onto each example; without `forget`, all +1."""
    offsets = example_offsets(examples)
    count = int(offsets[-1])
    polarity = np.ones(count, np.int64) if forget is None else np.where(forget > 0, -1, 1)
    return make_features(examples, offsets, polarity=polarity,
                         base_ce=np.zeros(count, np.float32) if base_ce is None else base_ce)


class ForgetRetainDataset(torch.utils.data.Dataset):
    """One item per forget example, with a retain example drawn at random (torch's RNG: seeded and checkpointed by
    the Trainer), so every epoch sees other retain examples."""

    def __init__(self, forget: list[dict[str, Any]], retain: list[dict[str, Any]] | None):
        self.forget, self.retain = forget, retain or []

    def __len__(self) -> int:
        return len(self.forget)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {"forget": self.forget[i]}
        if self.retain:
            item["retain"] = self.retain[int(torch.randint(len(self.retain), (1,)))]
        return item


class ForgetRetainCollator:
    """Forget rows first, then retain rows, padded together: the polarity says which token is which."""

    def __init__(self, pad_token_id: int):
        self.collate = Collator(pad_token_id)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self.collate([it["forget"] for it in items] + [it["retain"] for it in items if "retain" in it])


def mean_example_nll(model: torch.nn.Module, examples: list[Example], pad_token_id: int, desc: str) -> float:
    """Mean over examples of each example's mean response-token NLL (the LOSS attack's per-example score)."""
    offsets = example_offsets(examples)
    ce = token_ce(model, examples, pad_token_id, desc=desc).astype(np.float64)
    return float(np.mean(np.add.reduceat(ce, offsets[:-1]) / np.diff(offsets)))


class StopAtHoldout(TrainerCallback):
    """Ends training once the forget set's mean NLL reaches the holdout's, both measured under the current model
    (unlearning raises the NLL of unseen look-alikes too, so a level fixed up front would be the wrong target).
    Every process measures (scoring is collective under accelerate), so all stop at the same step."""

    def __init__(self, forget: list[Example], holdout: list[Example], pad_token_id: int, every: int):
        self.forget, self.holdout, self.pad, self.every = forget, holdout, pad_token_id, every
        self.checks: list[dict[str, float]] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every:
            return
        forget = mean_example_nll(model, self.forget, self.pad, "stopping rule: forget")
        holdout = mean_example_nll(model, self.holdout, self.pad, "stopping rule: holdout")
        model.train()
        self.checks.append({"step": state.global_step, "stop_forget_nll": forget, "stop_holdout_nll": holdout})
        if forget >= holdout:
            log.info("unlearn: step %d: forget NLL %.3f reached the holdout's %.3f, stopping", state.global_step,
                     forget, holdout)
            control.should_training_stop = True

    def summary(self) -> dict[str, Any]:
        last = self.checks[-1] if self.checks else {}
        return {"stopped": bool(last) and last["stop_forget_nll"] >= last["stop_holdout_nll"],
                **{k: v for k, v in last.items() if k != "step"}}


class KeepPruned(TrainerCallback):
    """Re-zero the pruned weights after every optimiser step, so prune-then-unlearn stays sparse."""

    def __init__(self, model: torch.nn.Module, masks: dict[str, torch.Tensor]):
        modules = dict(model.named_modules())
        self.pairs = [(modules[name].weight, mask) for name, mask in masks.items()]

    def on_step_end(self, args, state, control, **kwargs):
        with torch.no_grad():
            for weight, mask in self.pairs:
                weight.mul_(mask)


def unlearn_key(cfg: UnlearnConfig, model_path: Path) -> str:
    files = {name: fingerprint_path(getattr(cfg, name)) for name in ("forget", "retain", "holdout")
             if getattr(cfg, name)}
    ref = model_fingerprint(resolve_model_path(cfg.token_reference)) if cfg.tokens == "scored" else None
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("output", "save_steps")}
    return hash_obj("unlearn", settings, files, model_fingerprint(model_path), ref)


def forget_token_weights(cfg: UnlearnConfig, examples: list[Example], own_ce: np.ndarray, pad_id: int) -> np.ndarray:
    """1 for every forget token, or with --tokens scored for the top fraction by CE_reference - CE_model: the tokens
    the model knows much better than a model that never saw the forget set, i.e. the specific knowledge."""
    if cfg.tokens == "all":
        return np.ones_like(own_ce)
    reference = load_model(resolve_model_path(cfg.token_reference), cfg.dtype)
    ref_ce = token_ce(reference, examples, pad_id, desc="scoring forget tokens (reference)")
    del reference
    return partition_tokens(ref_ce - own_ce, cfg.token_fraction).astype(np.float32)


def run_unlearn(cfg: UnlearnConfig) -> dict[str, Any]:
    """Unlearn cfg.forget from cfg.model; writes OUTPUT/model and the logs. Skipped when already done."""
    cfg.validate()
    out = Path(cfg.output)
    model_path = resolve_model_path(cfg.model)
    key = unlearn_key(cfg, model_path)
    if stage_done(out, key) and (out / "model").is_dir():
        log.info("unlearn: %s is up to date, skipped", out)
        return read_json(out / DONE_MARKER)
    started = time.time()
    state = process_state()
    tokenizer = load_tokenizer(model_path)
    forget, _ = load_examples(cfg.forget, tokenizer, cfg.format, cfg.max_length)
    retain = load_examples(cfg.retain, tokenizer, cfg.format, cfg.max_length)[0] if cfg.retain else None
    holdout = load_examples(cfg.holdout, tokenizer, cfg.format, cfg.max_length)[0] if cfg.holdout else None
    model = load_trainable(model_path, ModelConfig(model=cfg.model, dtype=cfg.dtype))
    # The starting model's CE on the forget tokens: NPO's reference and the --tokens scored baseline.
    own_ce = token_ce(model, forget, tokenizer.pad_token_id, desc="scoring forget tokens")
    weights = forget_token_weights(cfg, forget, own_ce, tokenizer.pad_token_id)
    masks = unlearning.prune(model, cfg.prune) if cfg.prune > 0 else None
    method = build_method(cfg, list(model.parameters()))
    if uses_retain(method) and retain is None:
        raise ForgetuneError(f"unlearn: --method {cfg.method} has a retain term: pass --retain FILE")
    if method.writes_gradients and state.num_processes > 1:
        raise ForgetuneError(f"unlearn: --method {cfg.method} writes gradients itself and runs in one process only")
    # --tokens scored: a forget example with no selected token has nothing to forget (a batch of only such
    # examples would have no forget term at all), so it is left out.
    forget_features = [f for f in unlearn_features(forget, own_ce, weights) if -1 in f["polarity"]]
    if not forget_features:
        raise ForgetuneError(
            f"unlearn: --token-fraction {cfg.token_fraction} of {len(weights)} forget tokens selects none; raise it"
        )
    dataset = ForgetRetainDataset(forget_features,
                                  unlearn_features(retain) if retain and uses_retain(method) else None)
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / DONE_MARKER).unlink(missing_ok=True)
        write_text(out / "unlearn_config.yaml", yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    log.info("unlearn: %s on %d forget examples (%d forget tokens of %d)%s", cfg.method, len(forget),
             int(weights.sum()), len(weights), f", {len(retain)} retain examples" if retain else "")
    callbacks = [KeepPruned(model, masks)] if masks else []
    stop = StopAtHoldout(forget, holdout, tokenizer.pad_token_id, cfg.stop_every) if holdout else None
    model, history, full_weights = fit(
        model, tokenizer, dataset, method, cfg.train_config(), out, key=key,
        collator=ForgetRetainCollator(tokenizer.pad_token_id), callbacks=callbacks + ([stop] if stop else []),
    )
    steps = [h for h in history if "loss" in h]
    last = steps[-1] if steps else {}
    info = {"method": cfg.method, "seconds": round(time.time() - started, 2), "steps": last.get("step"),
            "forget_tokens": int(weights.sum()),
            **{k: last[k] for k in ("forget_nll", "retain_nll", "forget_term") if k in last},
            **(stop.summary() if stop else {})}
    if state.is_main_process:
        save_model(model, tokenizer, out / "model", merge_lora=True, weights=full_weights)
        write_json(out / "log_history.json", history + (stop.checks if stop else []))
        mark_done(out, key, **info)
    state.wait_for_everyone()
    return info

