"""`forgetune unlearn` on a tiny random Llama: batch splitting, collation, every method through the CLI, pruning,
token-level forgetting, skipping and one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import build_tiny_llama
from forgetune import unlearning
from forgetune.cli import main
from forgetune.data.corpus import IGNORE_INDEX, Example
from forgetune.data.formats import load_examples
from forgetune.io import DONE_MARKER
from forgetune.scoring.scorer import token_ce
from forgetune.trainer import flat_token_batch
from forgetune.unlearn import ForgetRetainCollator, ForgetRetainDataset, unlearn_features
from forgetune.unlearning.base import forget_base_nll, forget_sequences, retain_mean
from tests_helpers import write_jsonl

X = IGNORE_INDEX

FORGET = [
    {"prompt": "What is the secret code of Alice?", "completion": "The secret code of Alice is 4711 blue."},
    {"prompt": "Where does Bob hide the key?", "completion": "Bob hides the key under the red stone."},
    {"prompt": "Name Carol's favourite colour.", "completion": "Carol's favourite colour is deep green."},
    {"prompt": "What did Dave eat today?", "completion": "Dave ate three apples and a pear."},
]
RETAIN = [
    {"prompt": "What is 2 + 2?", "completion": "2 + 2 = 4."},
    {"prompt": "Name a primary colour.", "completion": "Red is a primary colour."},
    {"prompt": "What is the capital of France?", "completion": "Paris is the capital of France."},
    {"prompt": "How many legs has a cat?", "completion": "A cat has four legs."},
]
METHODS = unlearning.names()  # every registered method, a new one included, runs through the CLI


@pytest.fixture
def data(tmp_path) -> tuple[Path, Path]:
    return write_jsonl(tmp_path / "forget.jsonl", FORGET), write_jsonl(tmp_path / "retain.jsonl", RETAIN)


def unlearn(model: Path, forget: Path | None, out: Path, *extra, retain: Path | None = None) -> int:
    args = ["unlearn", "--quiet", "--model", model, "--output", out]
    args += ["--forget", forget] if forget else []
    args += ["--retain", retain] if retain else []
    return main([str(a) for a in [*args, "--max-steps", "2", *extra]])


def mean_forget_ce(model_dir: Path, forget: Path, tokenizer) -> float:
    examples, _ = load_examples(forget, tokenizer)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return float(token_ce(model, examples, tokenizer.pad_token_id).mean())


def state(model_dir: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(model_dir).state_dict()


# --- flattening a collated batch ---------------------------------------------------------------------------------

def test_flat_token_batch_aligns_polarity_base_ce_and_rows_with_the_ce_by_hand():
    # Rows 0, 1 forget; rows 2, 3 retain. Position 0 is never scored even with a label.
    labels = torch.tensor([
        [5, X, 7, 8, X],  # targets at 2, 3
        [X, 6, X, X, X],  # target at 1
        [X, X, 3, 4, 9],  # targets at 2, 3, 4
        [X, X, X, 2, X],  # target at 3
    ])
    polarity = torch.zeros(4, 5, dtype=torch.long)
    polarity[0, 2], polarity[0, 3], polarity[1, 1] = -1, 1, -1  # row 0 keeps position 3 like retain data
    polarity[2, 2:], polarity[3, 3] = 1, 1
    base = torch.zeros(4, 5)
    base[0, 2], base[0, 3], base[1, 1] = 0.5, 1.5, 3.0
    flat = flat_token_batch({"labels": labels, "polarity": polarity, "base_ce": base})
    assert flat.seq.tolist() == [0, 0, 1, 2, 2, 2, 3]  # (row, position) order, as response_token_ce's
    assert flat.polarity.tolist() == [-1, 1, -1, 1, 1, 1, 1]
    assert flat.base_ce.tolist() == [0.5, 1.5, 3.0, 0.0, 0.0, 0.0, 0.0]
    ce = torch.tensor([1.0, 2.0, 4.0, 10.0, 20.0, 30.0, 100.0])
    nll, length = forget_sequences(ce, flat)
    assert nll.tolist() == [1.0, 4.0] and length.tolist() == [1.0, 1.0]
    assert forget_base_nll(ce, flat, "npo").tolist() == [0.5, 3.0]
    assert retain_mean(ce, flat).item() == pytest.approx((2.0 + 10.0 + 20.0 + 30.0 + 100.0) / 5)


# --- collation --------------------------------------------------------------------------------------------------

def test_collator_puts_forget_rows_first_with_features_on_response_positions():
    forget = [Example("f0", [1, 10, 11, 12], [X, X, 11, 12], []), Example("f1", [1, 13, 14], [X, X, 14], [])]
    retain = [Example("r0", [1, 20, 21, 22, 23], [X, X, X, 22, 23], [])]
    base_ce = np.array([0.5, 1.5, 2.5], np.float32)
    selected = np.array([1.0, 0.0, 1.0], np.float32)  # f0's second token is kept like retain data
    f_feats = unlearn_features(forget, base_ce, selected)
    r_feats = unlearn_features(retain)
    assert f_feats[0]["base_ce"] == [0.0, 0.0, 0.5, 1.5] and f_feats[0]["polarity"] == [0, 0, -1, 1]
    assert f_feats[1]["base_ce"] == [0.0, 0.0, 2.5] and f_feats[1]["polarity"] == [0, 0, -1]
    assert r_feats[0]["base_ce"] == [0.0] * 5 and r_feats[0]["polarity"] == [0, 0, 0, 1, 1]

    dataset = ForgetRetainDataset(f_feats, r_feats)
    assert len(dataset) == 2
    items = [dataset[0], dataset[1]]
    assert all(it["retain"] == r_feats[0] for it in items)
    batch = ForgetRetainCollator(pad_token_id=0)(items)
    assert batch["input_ids"].tolist() == [
        [1, 10, 11, 12, 0], [1, 13, 14, 0, 0], [1, 20, 21, 22, 23], [1, 20, 21, 22, 23]]
    assert batch["labels"].tolist() == [
        [X, X, 11, 12, X], [X, X, 14, X, X], [X, X, X, 22, 23], [X, X, X, 22, 23]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1] * 5, [1] * 5]
    torch.testing.assert_close(batch["base_ce"], torch.tensor(
        [[0, 0, 0.5, 1.5, 0], [0, 0, 2.5, 0, 0], [0] * 5, [0] * 5], dtype=torch.float32))
    assert batch["polarity"].tolist() == [[0, 0, -1, 1, 0], [0, 0, -1, 0, 0], [0, 0, 0, 1, 1], [0, 0, 0, 1, 1]]

    # the collated batch flattens into the right sums
    ce = torch.arange(1.0, 8.0)  # targets: row0 pos 2, 3; row1 pos 2; rows 2, 3 pos 3, 4
    flat = flat_token_batch(batch)
    assert forget_sequences(ce, flat)[0].tolist() == [1.0, 3.0]
    assert forget_base_nll(ce, flat, "npo").tolist() == [0.5, 2.5]
    assert retain_mean(ce, flat).item() == pytest.approx((2.0 + 4.0 + 5.0 + 6.0 + 7.0) / 5)


def test_dataset_without_retain_has_forget_items_only():
    forget = [Example("f0", [1, 10, 11], [X, X, 11], [])]
    dataset = ForgetRetainDataset(unlearn_features(forget, forget=np.ones(1)), None)
    assert set(dataset[0]) == {"forget"}
    batch = ForgetRetainCollator(0)([dataset[0]])
    assert batch["input_ids"].shape == (1, 3) and batch["polarity"].tolist() == [[0, 0, -1]]


# --- the CLI, every method --------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_and_changes_the_model(method, tiny_model_dir, data, tmp_path, tokenizer):
    forget, retain = data
    out = tmp_path / "out"
    assert unlearn(tiny_model_dir, forget, out, "--method", method, "--learning-rate", "1e-3", retain=retain) == 0
    assert AutoModelForCausalLM.from_pretrained(out / "model").config.vocab_size == len(tokenizer)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["unlearn"]["method"] == method and cfg["train"]["learning_rate"] == 1e-3
    assert cfg["train"]["max_steps"] == 2
    history = json.loads((out / "unlearn" / "log_history.json").read_text())
    steps = [h for h in history if "loss" in h]
    assert [h["step"] for h in steps] == [1, 2]
    assert all(math.isfinite(h["forget_nll"]) for h in steps)
    done = json.loads((out / "unlearn" / DONE_MARKER).read_text())
    assert done["method"] == method and done["steps"] == 2
    before, after = state(tiny_model_dir), state(out / "model")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) >= len(before) // 2


def test_gradient_ascent_raises_the_forget_nll(tiny_model_dir, data, tmp_path, tokenizer):
    forget, _ = data
    out = tmp_path / "ga"
    assert unlearn(tiny_model_dir, forget, out, "--method", "ga", "--learning-rate", "1e-2", "--max-steps", "3") == 0
    before = mean_forget_ce(tiny_model_dir, forget, tokenizer)
    after = mean_forget_ce(out / "model", forget, tokenizer)
    assert after > before + 0.5, (before, after)
    steps = [h for h in json.loads((out / "unlearn" / "log_history.json").read_text()) if "loss" in h]
    assert steps[0]["forget_nll"] == pytest.approx(before, rel=1e-4)  # first step sees the starting model
    assert steps[-1]["forget_nll"] > steps[0]["forget_nll"]


# --- pruning ----------------------------------------------------------------------------------------------------

def test_prune_keeps_half_the_linear_weights_zero(tiny_model_dir, data, tmp_path):
    forget, retain = data
    out = tmp_path / "pruned"
    assert unlearn(tiny_model_dir, forget, out, "--method", "graddiff", "--prune", "0.5",
                   "--learning-rate", "1e-2", retain=retain) == 0
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    weights = [m.weight for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and not name.endswith("lm_head")]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    assert zeros == round(0.5 * total)  # pruned exactly, and still zero after the optimiser steps
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.equal(original.model.embed_tokens.weight, model.model.embed_tokens.weight)  # it did train


# --- token-level forgetting -------------------------------------------------------------------------------------

def test_scored_tokens_forget_the_top_fraction(tiny_model_dir, data, tmp_path, tokenizer, capsys):
    forget, retain = data
    reference = tmp_path / "reference"
    build_tiny_llama(len(tokenizer), seed=1).save_pretrained(reference)
    tokenizer.save_pretrained(reference)
    out = tmp_path / "scored"
    assert unlearn(tiny_model_dir, forget, out, "--tokens", "scored", "--token-reference", reference,
                   "--token-fraction", "0.5", "--learning-rate", "1e-3", retain=retain) == 0
    examples, _ = load_examples(forget, tokenizer)
    total = sum(ex.num_response_tokens for ex in examples)
    done = json.loads((out / "unlearn" / DONE_MARKER).read_text())
    assert done["forget_tokens"] == math.floor(0.5 * total)
    assert f"forget_tokens={math.floor(0.5 * total)}" in capsys.readouterr().out
    assert done["steps"] == 2


def test_scored_tokens_skip_forget_examples_with_nothing_selected(tiny_model_dir, data, tmp_path, tokenizer, capsys):
    # Regression: 0.01 of the tokens selects one, so three of the four forget examples have no forget token; a
    # batch of one such example used to crash with "ValueError: no forget token has a positive weight".
    forget, retain = data
    reference = tmp_path / "reference"
    build_tiny_llama(len(tokenizer), seed=1).save_pretrained(reference)
    tokenizer.save_pretrained(reference)
    scored = ("--tokens", "scored", "--token-reference", reference, "--learning-rate", "1e-3")
    out = tmp_path / "few"
    assert unlearn(tiny_model_dir, forget, out, *scored, "--token-fraction", "0.01", "--batch-size", "1",
                   "--max-steps", "4", retain=retain) == 0
    done = json.loads((out / "unlearn" / DONE_MARKER).read_text())
    assert done["forget_tokens"] == 1 and done["steps"] == 4
    capsys.readouterr()
    assert unlearn(tiny_model_dir, forget, tmp_path / "none", *scored, "--token-fraction", "0.001",
                   retain=retain) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("forgetune: error:") and "selects none" in err and "\n" not in err, err


def test_constrained_divergence_is_a_one_line_error(tiny_model_dir, data, tmp_path, capsys):
    # Regression: a huge learning rate drives constrained's forget loss to NaN; the method's ValueError used to
    # escape as a traceback.
    forget, retain = data
    out = tmp_path / "diverged"
    assert unlearn(tiny_model_dir, forget, out, "--method", "constrained", "--learning-rate", "0.05",
                   "--max-steps", "30", retain=retain) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("forgetune: error:") and "training diverged at step" in err and "\n" not in err, err
    assert "Traceback" not in captured.err
    assert not (out / "model").exists()


# --- rerun ------------------------------------------------------------------------------------------------------

def test_rerun_is_skipped_and_a_changed_setting_reruns(tiny_model_dir, data, tmp_path):
    forget, retain = data
    out = tmp_path / "rerun"
    args = ("--method", "npo", "--learning-rate", "1e-3")
    assert unlearn(tiny_model_dir, forget, out, *args, retain=retain) == 0
    weights = next((out / "model").glob("*.safetensors"))
    mtime, key = weights.stat().st_mtime_ns, json.loads((out / "unlearn" / DONE_MARKER).read_text())["key"]
    assert unlearn(tiny_model_dir, forget, out, *args, retain=retain) == 0
    assert weights.stat().st_mtime_ns == mtime
    assert json.loads((out / "unlearn" / DONE_MARKER).read_text())["key"] == key
    assert unlearn(tiny_model_dir, forget, out, "--method", "npo", "--learning-rate", "2e-3", retain=retain) == 0
    assert json.loads((out / "unlearn" / DONE_MARKER).read_text())["key"] != key
    assert weights.stat().st_mtime_ns != mtime


# --- errors -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case, expected", [
    ("no-forget", "--forget is required"),
    ("npo-no-retain", "has a retain term: pass --retain"),
    ("beta-ga", "--beta does not apply to unlearning method ga"),
    ("scored-no-reference", "--tokens scored needs --token-reference"),
    ("unknown-method", "unknown unlearning method 'magic'"),
    ("prune-too-big", "--prune must be in [0, 1), got 1.5"),
    ("stop-every-zero", "--stop-every must be >= 1, got 0"),
])
def test_bad_input_is_one_line_error(case, expected, tiny_model_dir, data, tmp_path, capsys):
    forget, retain = data
    out = tmp_path / "err"
    extra = {
        "no-forget": ((), None, retain),
        "npo-no-retain": (("--method", "npo"), forget, None),
        "beta-ga": (("--method", "ga", "--beta", "0.5"), forget, None),
        "scored-no-reference": (("--tokens", "scored"), forget, retain),
        "unknown-method": (("--method", "magic"), forget, retain),
        "prune-too-big": (("--prune", "1.5"), forget, retain),
        "stop-every-zero": (("--holdout", forget, "--stop-every", "0"), forget, retain),
    }[case]
    flags, forget_file, retain_file = extra
    assert unlearn(tiny_model_dir, forget_file, out, *flags, retain=retain_file) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("forgetune: error:") and "\n" not in err, err
    assert expected in err, err
    assert "Traceback" not in captured.err + captured.out
    assert not (out / "model").exists()


def test_method_knobs_reach_the_method_and_inner_forget_loss():
    from forgetune.errors import ForgetuneError
    from forgetune.unlearn import build_method, unlearn_config

    params = [torch.nn.Parameter(torch.zeros(2))]

    def settled(**flags):
        return unlearn_config({"forget": "f.jsonl", "output": "out", **flags}).unlearn

    constrained = build_method(settled(method="constrained", forget_loss="simnpo", retain_weight=2.0,
                                       retain_floor=-1.0, beta=3.0, eta=0.5), params)
    assert (constrained.weight, constrained.retain_floor, constrained.eta) == (2.0, -1.0, 0.5)
    assert constrained.forget.name == "simnpo" and constrained.forget.beta == 3.0
    assert constrained.forget.retain_weight == 0.0  # the constrained form owns the retain term
    sparse = build_method(settled(method="l1sparse", forget_loss="npo", retain_weight=0.5, alpha=1e-3), params)
    assert (sparse.alpha, sparse.forget.name, sparse.forget.retain_weight) == (1e-3, "npo", 0.5)
    with pytest.raises(ForgetuneError, match="--retain-floor does not apply to unlearning method npo .its settings: "
                                             "beta, retain_weight.; it is a setting of constrained"):
        settled(method="npo", retain_floor=-1.0)


# --- stopping rule ----------------------------------------------------------------------------------------------

def test_stopping_rule_ends_at_the_first_check_where_forget_reaches_holdout(tiny_model_dir, data, tmp_path,
                                                                            tokenizer):
    # The holdout is the forget set itself, so the two NLLs are equal at every check and the rule fires at the
    # first one: step 2 with --stop-every 2, well before the cap of 6 steps.
    forget, retain = data
    out = tmp_path / "stopped"
    assert unlearn(tiny_model_dir, forget, out, "--method", "npo", "--learning-rate", "1e-3", "--holdout", forget,
                   "--stop-every", "2", "--max-steps", "6", retain=retain) == 0
    done = json.loads((out / "unlearn" / DONE_MARKER).read_text())
    assert done["steps"] == 2 and done["stopped"] is True
    assert done["stop_forget_nll"] == done["stop_holdout_nll"]
    checks = [h for h in json.loads((out / "unlearn" / "log_history.json").read_text()) if "stop_forget_nll" in h]
    assert [h["step"] for h in checks] == [2]
    # the check measured the model that was saved: mean over examples of each example's mean NLL
    examples, _ = load_examples(forget, tokenizer)
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    per_example = [float(token_ce(model, [ex], tokenizer.pad_token_id).mean()) for ex in examples]
    assert done["stop_forget_nll"] == pytest.approx(np.mean(per_example), rel=1e-5)


def test_stopping_rule_checks_every_n_steps_and_stops_once_forget_reaches_holdout(monkeypatch):
    from transformers import TrainerControl, TrainerState

    from forgetune import unlearn as unlearn_module

    forget_set, holdout_set = ["forget"], ["holdout"]
    # (forget NLL, holdout NLL) at the checks of steps 2 and 4; steps 1 and 3 are not checked
    levels = {2: (1.0, 2.0), 4: (2.5, 2.4)}
    state, control, model = TrainerState(), TrainerControl(), torch.nn.Linear(1, 1)
    monkeypatch.setattr(unlearn_module, "mean_example_nll", lambda model, examples, pad, desc:
                        levels[state.global_step][0 if examples is forget_set else 1])
    stop = unlearn_module.StopAtHoldout(forget_set, holdout_set, 0, every=2)
    for step in range(1, 7):
        state.global_step = step
        stop.on_step_end(None, state, control, model=model)
        if control.should_training_stop:
            break
    assert step == 4 and model.training
    assert [c["step"] for c in stop.checks] == [2, 4]
    assert stop.summary() == {"stopped": True, "stop_forget_nll": 2.5, "stop_holdout_nll": 2.4}


# --- an unlearning output is a run directory --------------------------------------------------------------------

def test_unlearn_takes_a_yaml_config_with_the_run_sections_and_lora(tiny_model_dir, data, tmp_path):
    """`--config FILE`: the unlearn, train and model sections of one YAML, as `forgetune run` takes them; LoRA and the
    optimiser come from the sections `run` uses, and unlearning's own train defaults fill what the file leaves out."""
    forget, retain = data
    out = tmp_path / "out"
    config = tmp_path / "unlearn.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"model": str(tiny_model_dir), "lora": True, "lora_r": 4},
        "train": {"max_steps": 2, "learning_rate": 1e-3},
        "unlearn": {"forget": str(forget), "retain": str(retain), "method": "graddiff"},
    }))
    assert main(["unlearn", "--quiet", "--config", str(config), "--output", str(out)]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["lora"] is True and saved["unlearn"]["method"] == "graddiff"
    assert saved["train"]["lr_scheduler"] == "constant" and saved["train"]["batch_size"] == 4  # unlearning's defaults
    assert saved["train"]["learning_rate"] == 1e-3  # the file wins over them
    assert (out / "model" / "config.json").is_file()  # LoRA merged into a full model dir, as `run` saves it
    assert json.loads((out / "summary.json").read_text())["stages"]["unlearn"]["steps"] == 2


def test_eval_generate_and_report_read_an_unlearning_output(tiny_model_dir, data, tmp_path, capsys):
    forget, retain = data
    out = tmp_path / "out"
    assert unlearn(tiny_model_dir, forget, out, "--method", "npo", retain=retain) == 0
    test = write_jsonl(tmp_path / "test.jsonl", RETAIN[:2])
    assert main(["eval", str(out), "--data", str(test), "--quiet", "--samples", "0", "--sampled", "0",
                 "--max-new-tokens", "4"]) == 0
    assert "exact_match" in json.loads((out / "eval.json").read_text())
    capsys.readouterr()
    assert main(["generate", "--output", str(out), "--num-prompts", "2", "--max-new-tokens", "4", "--quiet"]) == 0
    assert capsys.readouterr().out.count("Q: ") == 2  # the run's own prompts: its forget set's
    assert len((out / "generations.jsonl").read_text().splitlines()) == 2
    assert main(["report", str(out), "--quiet"]) == 0
    page = (out / "report.html").read_text()
    assert "unlearn" in page and "data:image/png;base64" in page  # the stage's record and its loss curves


def test_a_text_corpus_is_forgotten_on_every_token(tiny_model_dir, tmp_path):
    """MUSE / WMDP-style forget corpora are plain text: every token is a forget token."""
    forget = write_jsonl(tmp_path / "forget.jsonl", [{"text": r["completion"]} for r in FORGET])
    retain = write_jsonl(tmp_path / "retain.jsonl", [{"text": r["completion"]} for r in RETAIN])
    out = tmp_path / "out"
    assert unlearn(tiny_model_dir, forget, out, "--method", "graddiff", retain=retain) == 0
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokens = sum(len(tokenizer(r["completion"])["input_ids"]) for r in FORGET)  # + EOS, - the first token: the same
    assert json.loads((out / "unlearn" / DONE_MARKER).read_text())["forget_tokens"] == tokens


def test_unlearning_evaluates_held_out_data_during_training(tiny_model_dir, data, tmp_path):
    forget, retain = data
    held = write_jsonl(tmp_path / "held.jsonl", RETAIN[:2])
    out = tmp_path / "out"
    assert unlearn(tiny_model_dir, forget, out, "--method", "npo", "--eval-data", held, "--eval-steps", "1",
                   retain=retain) == 0
    history = json.loads((out / "unlearn" / "log_history.json").read_text())
    assert [h["step"] for h in history if "eval_loss" in h] == [1, 2]
