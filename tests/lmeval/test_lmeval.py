"""lm-evaluation-harness on the tiny random Llama: a local multiple-choice task, checked against our own scoring."""

from __future__ import annotations

import json
import re
import socket
import sys

import datasets.config
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from forgetune.cli import main
from forgetune.errors import ForgetuneError
from forgetune.lmeval import run_lm_eval, write_multiple_choice_task
from tests_helpers import write_jsonl

QUESTIONS = [
    ("What is 2 + 2?", ["4", "5", "22"]),
    ("Capital of France?", ["Paris", "Rome", "Madrid", "Berlin"]),
    ("Colour of the sky?", ["green", "blue"]),
    ("Opposite of hot?", ["cold", "warm", "spicy"]),
    ("How many legs has a cat?", ["four", "two", "six"]),
]
TASK = "tiny_mc"


def choice_loglikelihoods(model, tokenizer, question: str, choices: list[str]) -> np.ndarray:
    """Summed log-probability of " " + choice after the prompt, tokenised as the harness does (whole, then split)."""
    context = f"Q: {question}\nA:"
    context_ids = tokenizer(context).input_ids
    out = []
    for choice in choices:
        ids = tokenizer(context + " " + choice).input_ids
        with torch.no_grad():
            logprobs = model(torch.tensor([ids[:-1]])).logits[0].log_softmax(-1)
        targets = torch.arange(len(context_ids), len(ids))
        out.append(logprobs[targets - 1, torch.tensor(ids)[targets]].sum().item())
    return np.array(out)


@pytest.fixture(scope="module")
def mc_task(tiny_model_dir, tmp_path_factory):
    """The task folder and the expected acc / acc_norm.

    The gold labels are chosen from the model's own scores (argmax for even questions, another choice for odd ones),
    so the expected accuracy is 3/5, not a value a broken or constant scorer would hit by chance.
    """
    root = tmp_path_factory.mktemp("lmeval")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    rows, norm_hits = [], []
    for i, (question, choices) in enumerate(QUESTIONS):
        lls = choice_loglikelihoods(model, tokenizer, question, choices)
        assert np.sort(lls)[-1] - np.sort(lls)[-2] > 1e-3  # no near tie that float noise could flip
        best = int(np.argmax(lls))
        label = best if i % 2 == 0 else (best + 1) % len(choices)
        rows.append({"question": question, "choices": choices, "label": label})
        norm_hits.append(int(np.argmax(lls / np.array([len(c) for c in choices]))) == label)
    data = write_jsonl(root / "mc.jsonl", rows)
    assert write_multiple_choice_task(root / "tasks", TASK, data) == TASK
    return root / "tasks", 3 / 5, float(np.mean(norm_hits))


def test_acc_matches_our_own_loglikelihoods(tiny_model_dir, mc_task, monkeypatch):
    task_dir, acc, acc_norm = mc_task
    lookups = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: lookups.append(args[:2]) or [])
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # as when imported before the offline variables
    results = run_lm_eval(tiny_model_dir, [TASK], include_path=task_dir, batch_size=4)
    assert lookups == []  # offline: not even the datasets library's download counter
    metrics = results[TASK]
    assert metrics["acc"] == pytest.approx(acc)
    assert metrics["acc_norm"] == pytest.approx(acc_norm)
    assert metrics["acc_stderr"] == pytest.approx(np.sqrt(acc * (1 - acc) / (len(QUESTIONS) - 1)))
    assert all(isinstance(v, float) for v in metrics.values()) and "alias" not in metrics


def test_adapter_dir_is_evaluated_on_its_base(tiny_model_dir, mc_task, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapter = tmp_path / "adapter"
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    task_dir, acc, _ = mc_task
    # A fresh LoRA adapter is the identity (B = 0): the base model's accuracy.
    assert run_lm_eval(adapter, [TASK], include_path=task_dir)[TASK]["acc"] == pytest.approx(acc)
    config["base_model_name_or_path"] = "some-org/some-hub-model"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ForgetuneError, match="base model 'some-org/some-hub-model' is not a local directory"):
        run_lm_eval(adapter, [TASK], include_path=task_dir)


@pytest.mark.slow
def test_unknown_task_is_a_one_line_error(tiny_model_dir, mc_task):
    with pytest.raises(ForgetuneError, match="unknown lm-eval task.*no_such_task") as info:
        run_lm_eval(tiny_model_dir, [TASK, "no_such_task"], include_path=mc_task[0])
    assert "\n" not in str(info.value)


def test_missing_harness_names_the_extra(tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` raise ImportError
    with pytest.raises(ForgetuneError, match=r"pip install 'forgetune\[lmeval\]'"):
        run_lm_eval(tiny_model_dir, [TASK])


def test_cli_eval_runs_lm_eval_tasks_without_data(tiny_model_dir, mc_task, tmp_path, capsys):
    report = tmp_path / "eval.json"
    code = main(["eval", str(tiny_model_dir), "--lm-eval-tasks", TASK, "--lm-eval-include", str(mc_task[0]),
                 "--lm-eval-limit", "2", "--report", str(report), "--quiet"])
    assert code == 0
    assert re.search(rf"^lm_eval/{TASK}/acc +0\.5000$", capsys.readouterr().out, re.MULTILINE)
    # The first two questions only: the model's choice is the gold one for the first, not for the second.
    assert json.loads(report.read_text())["lm_eval"][TASK]["acc"] == 0.5
    assert main(["eval", str(tiny_model_dir), "--quiet"]) == 2
    assert "--lm-eval-tasks" in capsys.readouterr().err


def test_cli_empty_task_list_is_a_one_line_error(tiny_model_dir, capsys):
    assert main(["eval", str(tiny_model_dir), "--lm-eval-tasks", ",", "--quiet"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "forgetune: error: --lm-eval-tasks ',' names no task; pass e.g. --lm-eval-tasks a,b"]
