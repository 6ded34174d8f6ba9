"""`forgetune unlearn`: remove what a model learned from a forget set while keeping its utility on a retain set.

Each step sees a batch of forget examples and as many retain examples drawn at random (open-unlearning's
ForgetRetainDataset: an epoch is one pass over the forget set, however large the retain set), in one forward pass.
Everything the method needs travels in the batch: the forget tokens' CE under the starting model (NPO's frozen
reference, computed once up front instead of keeping a second model in memory) and each token's polarity (-1 =
forget; +1 = retain data, or with `--tokens scored` a forget token kept like retain data). The trainer is the SFT
objectives' own: it calls the registered method through the same loss protocol without knowing which one it is.

The output is a run directory like `forgetune run`'s (`forgetune eval`, `generate` and `report` read it)::

    config.yaml             the resolved config (the run config's sections; `unlearn:` holds the method and sets)
    model/                  the unlearned model, a Hugging Face dir
    unlearn/                log_history.json (losses, forget / retain NLL, method metrics per step), .done.json
                            (run time, steps, final metrics: a rerun with the same inputs and config is skipped)
    summary.json            the forget set's counts and the unlearn stage's record

With `--holdout FILE` (data of the forget set's kind that the model never trained on) unlearning stops once the
forget set is as unlikely as that data: a fixed budget overshoots, and a forget set far *less* likely than unseen data
betrays its membership to a loss attack as much as a remembered one does.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from forgetune import unlearning
from forgetune.config import UNLEARN_DEFAULTS, RunConfig, UnlearnConfig, dump_yaml, resolve, result_settings
from forgetune.data.collator import Collator, TokenFeatures, make_features
from forgetune.data.corpus import Example, example_offsets
from forgetune.data.formats import load_examples
from forgetune.data.hub import is_dataset_name, resolve_data
from forgetune.errors import ForgetuneError
from forgetune.io import (
    fingerprint_path,
    hash_obj,
    write_json,
    write_text,
)
from forgetune.models import (
    load_model,
    load_options,
    load_tokenizer,
    load_trainable,
    model_fingerprint,
    resolve_model_path,
    save_model,
)
from forgetune.objectives import Objective
from forgetune.processes import process_state
from forgetune.rundir import RunDir
from forgetune.scoring.partition import partition_tokens
from forgetune.scoring.scorer import token_ce
from forgetune.trainer import fit
from forgetune.unlearning.base import Wrapper

log = logging.getLogger(__name__)

def unlearn_config(flags: dict[str, Any] | None = None, yaml_path: str | Path | None = None) -> RunConfig:
    """The resolved config of an unlearning run: the run config's sections, unlearning's train defaults underneath
    (`config.UNLEARN_DEFAULTS`), then the YAML file, then `flags` (one flat {field: value}, as the CLI's)."""
    return resolve(yaml_path, flags, base=UNLEARN_DEFAULTS)


def check_inputs(cfg: RunConfig) -> None:
    """What a run of `forgetune unlearn` needs beyond a valid config: its output, a forget set, existing files, and
    methods that exist; one line each."""
    u = cfg.unlearn
    for value, flag, what in ((u.forget, "forget", "a file of the records to unlearn"),
                              (cfg.output, "output", "a folder for the result")):
        if not value:
            raise ForgetuneError(f"unlearn: --{flag} is required ({what})")
    for name in ("forget", "retain", "holdout"):
        path = getattr(u, name)
        if path and not Path(path).exists() and not is_dataset_name(path):
            raise ForgetuneError(f"{path}: file not found (--{name})")
    unlearning.get(u.forget_loss)


def build_method(cfg: UnlearnConfig, parameters: list[torch.nn.Parameter]) -> Objective:
    """The registered method with its settings (`cfg.method_args`, as the config settled them), a wrapper with its
    forget loss, and the trainable parameters where the method declares it needs them."""
    cls = unlearning.get(cfg.method)
    context = {"forget_loss": cfg.forget_loss} if issubclass(cls, Wrapper) else {}
    if cls.needs_parameters:
        context["parameters"] = parameters
    return cls(**context, **cfg.method_args)


def unlearn_features(examples: Sequence[Example], base_ce: np.ndarray | None = None,
                     forget: np.ndarray | None = None) -> TokenFeatures:
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

    def __init__(self, forget: Sequence[dict[str, Any]], retain: Sequence[dict[str, Any]] | None):
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


def mean_example_nll(model: torch.nn.Module, examples: Sequence[Example], pad_token_id: int, desc: str) -> float:
    """Mean over examples of each example's mean response-token NLL (the LOSS attack's per-example score)."""
    offsets = example_offsets(examples)
    ce = token_ce(model, examples, pad_token_id, desc=desc).astype(np.float64)
    return float(np.mean(np.add.reduceat(ce, offsets[:-1]) / np.diff(offsets)))


class StopAtHoldout(TrainerCallback):
    """Ends training once the forget set's mean NLL reaches the holdout's, both measured under the current model
    (unlearning raises the NLL of unseen look-alikes too, so a level fixed up front would be the wrong target).
    Every process measures (scoring is collective under accelerate), so all stop at the same step."""

    def __init__(self, forget: Sequence[Example], holdout: Sequence[Example], pad_token_id: int, every: int):
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


def unlearn_key(cfg: RunConfig, model_path: Path) -> str:
    u = cfg.unlearn
    files = {name: fingerprint_path(resolve_data(getattr(u, name))) for name in ("forget", "retain", "holdout")
             if getattr(u, name)}
    if cfg.train.eval_data:
        files["eval_data"] = fingerprint_path(resolve_data(cfg.train.eval_data))
    ref = model_fingerprint(resolve_model_path(u.token_reference)) if u.tokens == "scored" else None
    train = result_settings(cfg.train, leave_out=("save_steps",))
    data = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k != "data"}
    return hash_obj("unlearn", dataclasses.asdict(u), train, data, dataclasses.asdict(cfg.model), files,
                    model_fingerprint(model_path), ref)


def forget_token_weights(cfg: RunConfig, examples: Sequence[Example], own_ce: np.ndarray, pad_id: int) -> np.ndarray:
    """1 for every forget token, or with --tokens scored for the top fraction by CE_reference - CE_model: the tokens
    the model knows much better than a model that never saw the forget set, i.e. the specific knowledge."""
    u = cfg.unlearn
    if u.tokens == "all":
        return np.ones_like(own_ce)
    reference = load_model(resolve_model_path(u.token_reference), **load_options(cfg.model))
    ref_ce = token_ce(reference, examples, pad_id, desc="scoring forget tokens (reference)")
    del reference
    return partition_tokens(ref_ce - own_ce, u.token_fraction).astype(np.float32)


def run_unlearn(cfg: RunConfig) -> dict[str, Any]:
    """Unlearn cfg.unlearn.forget from cfg.model.model into the run directory cfg.output (config.yaml, model/,
    unlearn/, summary.json: `forgetune eval`, `generate` and `report` read it like any run). Skipped when done."""
    check_inputs(cfg)
    u, d = cfg.unlearn, cfg.data
    out = RunDir(cfg.output)
    stage_dir = out.stage("unlearn")
    model_path = resolve_model_path(cfg.model.model)
    key = unlearn_key(cfg, model_path)
    if (done := out.begin("unlearn", key, redo=not out.model.is_dir())) is not None:
        return done
    started = time.time()
    state = process_state()
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)

    def load(path: str | None) -> Sequence[Example] | None:
        return load_examples(path, tokenizer, d.format, d.max_length, d.system_prompt)[0] if path else None

    forget, counts = load_examples(u.forget, tokenizer, d.format, d.max_length, d.system_prompt)
    retain, holdout, held_out = load(u.retain), load(u.holdout), load(cfg.train.eval_data)
    model = load_trainable(model_path, cfg.model)
    # The starting model's CE on the forget tokens: NPO's reference and the --tokens scored baseline.
    own_ce = token_ce(model, forget, tokenizer.pad_token_id, desc="scoring forget tokens")
    weights = forget_token_weights(cfg, forget, own_ce, tokenizer.pad_token_id)
    masks = unlearning.prune(model, u.prune) if u.prune > 0 else None
    method = build_method(u, list(model.parameters()))
    if method.uses_retain and retain is None:
        raise ForgetuneError(f"unlearn: --method {u.method} has a retain term: pass --retain FILE")
    if method.writes_gradients and state.num_processes > 1:
        raise ForgetuneError(f"unlearn: --method {u.method} writes gradients itself and runs in one process only")
    # --tokens scored: a forget example with no selected token has nothing to forget (a batch of only such
    # examples would have no forget term at all), so it is left out.
    forget_features = [f for f in unlearn_features(forget, own_ce, weights) if -1 in f["polarity"]]
    if not forget_features:
        raise ForgetuneError(
            f"unlearn: --token-fraction {u.token_fraction} of {len(weights)} forget tokens selects none; raise it"
        )
    dataset = ForgetRetainDataset(forget_features,
                                  unlearn_features(retain) if retain and method.uses_retain else None)
    if state.is_main_process:
        stage_dir.mkdir(parents=True, exist_ok=True)
        write_text(out.config, dump_yaml(cfg))
    log.info("unlearn: %s on %d forget examples (%d forget tokens of %d)%s", u.method, len(forget),
             int(weights.sum()), len(weights), f", {len(retain)} retain examples" if retain else "")
    callbacks = [KeepPruned(model, masks)] if masks else []
    stop = StopAtHoldout(forget, holdout, tokenizer.pad_token_id, u.stop_every) if holdout else None
    model, history, full_weights = fit(
        model, tokenizer, dataset, method, cfg.train, stage_dir, key=key,
        collator=ForgetRetainCollator(tokenizer.pad_token_id), callbacks=callbacks + ([stop] if stop else []),
        eval_features=ForgetRetainDataset(make_features(held_out), None) if held_out else None,
    )
    steps = [h for h in history if "loss" in h]
    last = steps[-1] if steps else {}
    if state.is_main_process:
        save_model(model, tokenizer, out.model, cfg.model.merge_lora, weights=full_weights)
        write_json(out.log_history("unlearn"), history + (stop.checks if stop else []))
    return out.finish("unlearn", key, started, counts, method=u.method, steps=last.get("step"),
                      forget_tokens=int(weights.sum()),
                      **{k: last[k] for k in ("forget_nll", "retain_nll", "forget_term") if k in last},
                      **(stop.summary() if stop else {}))
