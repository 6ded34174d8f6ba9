"""End to end through the CLI on a tiny random Llama: stages, skipping, outputs, objectives, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from forgetune import evaluate
from forgetune.cli import main
from forgetune.io import DONE_MARKER
from tests_helpers import fake_gsm8k, fake_truthfulqa, write_jsonl

FAST = ["--max-steps", "2", "--batch-size", "4", "--logging-steps", "1", "--score-batch-size", "5", "--quiet"]


def run_cli(*args: str) -> int:
    return main([str(a) for a in args])


def base_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--data", str(data), "--output", str(out), *FAST, *extra]


def marker_key(out: Path, stage: str) -> str:
    return json.loads((out / stage / DONE_MARKER).read_text())["key"]


def test_run_on_a_text_corpus_scores_and_partitions_every_token(tiny_model_dir, tmp_path):
    """Continued-pre-training data: no template, every token but the first scored, partitioned and trained on."""
    from forgetune.bench.data.arith import make_arith

    texts = [{"text": f"{r['prompt']} {r['completion']}"} for r in make_arith(16, noise=0.25, seed=1)]
    data = write_jsonl(tmp_path / "text.jsonl", texts)
    out = tmp_path / "run"
    assert run_cli("run", *base_args(tiny_model_dir, data, out, "--cross-fit", "2")) == 0
    summary = json.loads((out / "summary.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    every_token = sum(len(tokenizer(t["text"])["input_ids"]) for t in texts)  # + EOS - the unscored first token
    assert summary["stages"]["score"]["tokens"] == every_token
    stages = summary["stages"]["partition"]
    assert stages["positive"] + stages["negative"] + stages["ignored"] == every_token


def test_run_end_to_end_forget(tiny_model_dir, arith_jsonl, tmp_path):
    out = tmp_path / "run"
    two_way = ["--objective", "forget", "--rho", "0.7", "--negative-below", "none"]
    assert run_cli("run", *base_args(tiny_model_dir, arith_jsonl, out, *two_way)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["stages"]) == {"reference", "score", "partition", "train"}
    assert summary["stages"]["reference"]["references"] == 2  # cross-fit 2 is the default
    assert summary["stages"]["train"]["steps"] == 2
    assert "lambda" in summary["stages"]["train"] and "ce_neg" in summary["stages"]["train"]
    for stage in ("reference", "score", "partition", "train"):
        assert summary["stages"][stage]["seconds"] >= 0
    scores = np.load(out / "score" / "scores.npy")
    ce_base, ce_ref = np.load(out / "score" / "ce_base.npy"), np.load(out / "score" / "ce_ref.npy")
    np.testing.assert_allclose(scores, ce_base - ce_ref, rtol=0, atol=0)
    offsets = np.load(out / "score" / "offsets.npy")
    assert offsets[-1] == scores.size == summary["stages"]["score"]["tokens"]
    polarity = np.load(out / "partition" / "polarity.npy")
    assert (polarity == 1).sum() == int(0.7 * scores.size) == summary["stages"]["partition"]["positive"]
    assert (polarity == -1).sum() == scores.size - (polarity == 1).sum()  # every token assigned, none dropped
    assert (out / "config.yaml").is_file()
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.vocab_size > 0


def test_rerun_skips_unchanged_stages_and_redoes_changed(tiny_model_dir, arith_jsonl, tmp_path, capsys):
    out = tmp_path / "run"
    args = base_args(tiny_model_dir, arith_jsonl, out, "--negative-below", "none")
    assert run_cli("run", *args) == 0
    keys = {s: marker_key(out, s) for s in ("reference", "score", "partition", "train")}
    mtimes = {s: (out / s / DONE_MARKER).stat().st_mtime_ns for s in keys}
    assert run_cli("run", *args) == 0
    assert {s: (out / s / DONE_MARKER).stat().st_mtime_ns for s in keys} == mtimes  # nothing recomputed
    assert run_cli("run", *args, "--rho", "0.5") == 0
    assert marker_key(out, "reference") == keys["reference"]
    assert (out / "reference" / DONE_MARKER).stat().st_mtime_ns == mtimes["reference"]
    assert (out / "score" / DONE_MARKER).stat().st_mtime_ns == mtimes["score"]
    assert marker_key(out, "partition") != keys["partition"]
    assert marker_key(out, "train") != keys["train"]
    polarity = np.load(out / "partition" / "polarity.npy")
    assert (polarity == 1).sum() == int(0.5 * polarity.size)


def test_default_partition_forgets_only_below_zero_and_learns_the_rest(tiny_model_dir, arith_jsonl, tmp_path):
    out = tmp_path / "run"
    assert run_cli("run", *base_args(tiny_model_dir, arith_jsonl, out)) == 0
    scores = np.load(out / "score" / "scores.npy")
    polarity = np.load(out / "partition" / "polarity.npy")
    top = np.sort(scores)[::-1][int(0.7 * scores.size) - 1]  # the smallest top-rho score
    assert set(np.unique(polarity)) <= {-1, 1}  # neutral tokens are learned, none ignored
    assert np.array_equal(polarity == -1, (scores < 0) & (scores < top))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"]["train"]["objective"] == "forget-npo"


def test_stages_one_by_one_and_generate(tiny_model_dir, arith_jsonl, tmp_path, capsys):
    out = tmp_path / "run"
    args = base_args(tiny_model_dir, arith_jsonl, out, "--cross-fit", "1", "--reference-fraction", "0.5")
    assert run_cli("reference", *args) == 0
    plan = json.loads((out / "reference" / "plan.json").read_text())
    assert len(plan) == 1 and len(plan[0]["train"]) == 12 and plan[0]["score"] is None
    assert run_cli("score", *args) == 0
    assert run_cli("partition", *args, "--negative-below", "0", "--granularity", "sequence") == 0
    polarity = np.load(out / "partition" / "polarity.npy")
    scores = np.load(out / "score" / "scores.npy")
    assert set(np.unique(polarity)) <= {-1, 0, 1}
    assert np.all(scores[polarity == -1] < 0)
    assert run_cli("train", *args, "--negative-below", "0", "--granularity", "sequence",
                   "--objective", "forget-unlikelihood") == 0
    capsys.readouterr()
    assert run_cli("generate", *args, "--negative-below", "0", "--granularity", "sequence",
                   "--objective", "forget-unlikelihood", "--num-prompts", "2", "--max-new-tokens", "4",
                   "--compare-base") == 0
    printed = capsys.readouterr().out
    assert printed.count("Q: ") == 2 and "base:" in printed and "trained:" in printed
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"prompt", "base", "answer"} <= set(rows[0])
    # rank_by reference re-partitions the same scores by -CE_ref: negatives are the tokens the reference finds unlikely
    assert run_cli("partition", *args, "--rank-by", "reference", "--negative-below", "-1.0") == 0
    ce_ref = np.load(out / "score" / "ce_ref.npy")
    by_reference = np.load(out / "partition" / "polarity.npy")
    lowest = np.sort(-ce_ref)[::-1][int(0.7 * ce_ref.size) - 1]  # the smallest top-rho -CE_ref
    assert np.array_equal(by_reference == -1, (-ce_ref < lowest) & (ce_ref > 1.0))
    assert set(np.unique(by_reference)) <= {-1, 1}  # neutral tokens (p >= 1/e) are learned by default


def test_score_before_reference_is_a_clear_error(tiny_model_dir, arith_jsonl, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("score", *base_args(tiny_model_dir, arith_jsonl, out)) == 2
    assert "run `forgetune reference` first" in capsys.readouterr().err


def test_sft_needs_no_reference(tiny_model_dir, arith_jsonl, tmp_path):
    out = tmp_path / "run"
    assert run_cli("run", *base_args(tiny_model_dir, arith_jsonl, out, "--objective", "sft")) == 0
    assert not (out / "reference").exists()
    assert json.loads((out / "summary.json").read_text())["stages"]["train"]["objective"] == "sft"


@pytest.mark.parametrize("objective", ["ignore", "forget", "forget-unlikelihood", "forget-npo"])
def test_every_trainable_parameter_changes(objective, tiny_model_dir, arith_jsonl, tmp_path):
    out = tmp_path / "run"
    ramp = [] if objective == "ignore" else ["--lambda-min", "0.2"]  # ignore has no negative term to weigh
    assert run_cli("run", *base_args(tiny_model_dir, arith_jsonl, out, "--objective", objective,
                                     "--learning-rate", "1e-2", *ramp)) == 0
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    unchanged = [name for name, value in before.items() if torch.equal(value, after[name])]
    assert unchanged == [], f"parameters not trained: {unchanged}"


def test_lora_merged_and_adapter_outputs(tiny_model_dir, arith_jsonl, tmp_path):
    merged, adapter = tmp_path / "merged", tmp_path / "adapter"
    lora = ["--objective", "sft", "--lora", "--lora-r", "4", "--learning-rate", "1e-2"]
    assert run_cli("run", *base_args(tiny_model_dir, arith_jsonl, merged, *lora)) == 0
    assert (merged / "model" / "config.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(merged / "model").state_dict()
    assert any(not torch.equal(base[k], tuned[k]) for k in base if "proj" in k)
    assert run_cli("run", *base_args(tiny_model_dir, arith_jsonl, adapter, *lora, "--no-merge-lora")) == 0
    assert (adapter / "model" / "adapter_config.json").is_file()
    from forgetune.models import load_for_inference

    reloaded = load_for_inference(adapter / "model")  # base + adapter, merged back into a plain model
    base_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert type(reloaded) is type(base_model)
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in base_model.parameters())


def test_gradient_checkpointing_with_lora_still_trains_adapters(tiny_model_dir, arith_jsonl, tmp_path):
    out = tmp_path / "run"
    args = ["--objective", "sft", "--lora", "--lora-r", "4", "--learning-rate", "1e-2", "--gradient-checkpointing",
            "--no-merge-lora"]
    assert run_cli("run", *base_args(tiny_model_dir, arith_jsonl, out, *args)) == 0
    from safetensors.torch import load_file

    weights = load_file(out / "model" / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # lora_B starts at zero: nonzero means it trained


def test_reference_data_mode(tiny_model_dir, arith_jsonl, tmp_path):
    from forgetune.bench.data.arith import make_arith

    trusted = write_jsonl(tmp_path / "trusted.jsonl", make_arith(8, noise=0.0, seed=9, id_prefix="t"))
    out = tmp_path / "run"
    assert run_cli("run", *base_args(tiny_model_dir, arith_jsonl, out, "--reference-data", trusted)) == 0
    plan = json.loads((out / "reference" / "plan.json").read_text())
    assert plan == [{"train": "reference_data", "score": None}]


def test_reference_model_mode_scores_with_the_given_model_and_trains_none(tiny_model_dir, arith_jsonl, tmp_path):
    """--reference-model: the plan trains nothing, the scores are that model's CE, and the model is never deleted."""
    import numpy as np

    from forgetune.data.formats import load_examples
    from forgetune.models import load_model, load_tokenizer
    from forgetune.scoring.scorer import token_ce

    out = tmp_path / "run"
    assert run_cli("run", *base_args(tiny_model_dir, arith_jsonl, out, "--reference-model", tiny_model_dir)) == 0
    assert json.loads((out / "reference" / "plan.json").read_text()) == [{"train": None, "score": None}]
    assert not list((out / "reference").glob("model-*")) and (tiny_model_dir / "config.json").is_file()
    summary = json.loads((out / "summary.json").read_text())["stages"]
    assert summary["reference"]["mode"] == "reference_model"
    tokenizer = load_tokenizer(tiny_model_dir)
    examples, _ = load_examples(arith_jsonl, tokenizer)
    expected = token_ce(load_model(tiny_model_dir), examples, tokenizer.pad_token_id)
    assert np.allclose(np.load(out / "score" / "ce_ref.npy"), expected, atol=1e-5)
    assert np.allclose(np.load(out / "score" / "scores.npy"), 0.0, atol=1e-5)  # the base is its own reference


def test_stale_scores_are_detected(tiny_model_dir, arith_jsonl, tmp_path, capsys):
    from forgetune.bench.data.arith import make_arith

    out = tmp_path / "run"
    assert run_cli("run", *base_args(tiny_model_dir, arith_jsonl, out)) == 0
    other = write_jsonl(tmp_path / "other.jsonl", make_arith(24, noise=0.25, seed=4, id_prefix="o"))
    capsys.readouterr()
    assert run_cli("partition", *base_args(tiny_model_dir, other, out)) == 2  # scores of arith.jsonl, data of other
    assert "no up-to-date scores" in capsys.readouterr().err
    # A score file from another dataset under a valid marker (copied by hand): caught by its ids and offsets.
    ids = out / "score" / "ids.json"
    ids.write_text(json.dumps([f"x{i}" for i in range(24)]))
    (out / "partition" / DONE_MARKER).unlink(missing_ok=True)  # the failed attempt above already dropped it
    assert run_cli("partition", *base_args(tiny_model_dir, arith_jsonl, out)) == 2
    err = capsys.readouterr().err
    assert "scores belong to another dataset" in err and "stale" in err


def test_yaml_config_and_saved_resolved_config(tiny_model_dir, arith_jsonl, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"model: {{model: {tiny_model_dir}}}\ndata: {{data: {arith_jsonl}}}\npartition: {{rho: 0.6}}\n"
        "train: {objective: forget-npo, max_steps: 1, batch_size: 4}\n"
    )
    assert run_cli("run", "--config", config, "--output", out, "--quiet", "--rho", "0.5") == 0
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["partition"]["rho"] == 0.5  # the flag wins over the YAML
    assert saved["train"]["objective"] == "forget-npo"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "forgetune", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_file", "file not found"),
        ("malformed_line", "bad.jsonl:2: malformed JSON"),
        ("rho", "rho must be in [0, 1]"),
        ("objective", "unknown objective"),
        ("model_dir", "not a local Hugging Face model directory"),
    ],
)
def test_bad_input_is_one_line_exit_2(case, expected, tiny_model_dir, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": \n')
    good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": "a", "completion": "b"}])
    args = {
        "missing_file": ["--data", tmp_path / "nope.jsonl"],
        "malformed_line": ["--data", data],
        "rho": ["--data", good, "--rho", "1.5"],
        "objective": ["--data", good, "--objective", "nope"],
        "model_dir": ["--data", good, "--model", tmp_path],
    }[case]
    model = [] if case == "model_dir" else ["--model", tiny_model_dir]
    result = _cli("run", *map(str, model + args + ["--output", tmp_path / "out"]), cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_help_lists_the_stages():
    result = subprocess.run([sys.executable, "-m", "forgetune", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for stage in ("run", "reference", "score", "partition", "train", "generate", "demo"):
        assert stage in result.stdout


def test_eval_run_reports_every_metric(tiny_model_dir, arith_jsonl, tmp_path, capsys, monkeypatch):
    from forgetune.bench.data.arith import make_arith

    out = tmp_path / "run"
    assert run_cli("run", *base_args(tiny_model_dir, arith_jsonl, out, "--negative-below", "0")) == 0
    test = write_jsonl(tmp_path / "test.jsonl", make_arith(6, noise=0.0, seed=11, id_prefix="test"))
    capsys.readouterr()
    assert run_cli("eval", out, "--data", test, "--samples", "2", "--diversity-prompts", "3",
                   "--max-new-tokens", "6", "--quiet") == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "eval.json").read_text())
    for key in ("exact_match", "perplexity", "distinct_1", "distinct_2", "self_bleu", "memorised_noise",
                "token_auroc", "example_auroc_min", "token_precision", "token_recall"):
        assert key in results and np.isfinite(results[key]), key
        assert key in printed
    assert 0.0 <= results["exact_match"] <= 1.0 and results["perplexity"] > 1.0
    assert results["n_test"] == 6

    # The test prompts and the corrupted training prompts are answered in one call: each answer reaches its metric.
    noise = {r["prompt"]: r["completion"] for r in map(json.loads, arith_jsonl.read_text().splitlines())
             if r["meta"]["corrupted"]}
    right = {r["prompt"]: r["completion"] for r in map(json.loads, test.read_text().splitlines())}
    assert noise and not noise.keys() & right.keys()
    monkeypatch.setattr(evaluate, "generate_answers", lambda model, tokenizer, prompts, *args, **kwargs: [
        {**noise, **right}[p[-1]["content"]] for p in prompts])
    assert run_cli("eval", out, "--data", test, "--samples", "0", "--quiet") == 0
    results = json.loads((out / "eval.json").read_text())
    assert results["exact_match"] == 1.0 and results["memorised_noise"] == 1.0


def test_eval_plain_model_dir(tiny_model_dir, tmp_path, capsys):
    from forgetune.bench.data.arith import make_arith

    test = write_jsonl(tmp_path / "test.jsonl", make_arith(4, noise=0.0, seed=11, id_prefix="test"))
    report = tmp_path / "eval.json"
    assert run_cli("eval", tiny_model_dir, "--data", test, "--samples", "0", "--max-new-tokens", "4",
                   "--report", report, "--quiet") == 0
    results = json.loads(report.read_text())
    assert "distinct_1" not in results and "memorised_noise" not in results
    assert results["n_test"] == 4
    assert run_cli("eval", tmp_path, "--data", test, "--quiet") == 2
    assert "neither a forgetune run directory" in capsys.readouterr().err


def test_bench_writes_tables_and_plots(tiny_model_dir, tmp_path, capsys):
    results = tmp_path / "results"
    code = run_cli("bench", "arith", "--model", tiny_model_dir, "--results", results, "--n-train", "16",
                   "--n-test", "4", "--max-steps", "1", "--batch-size", "4", "--samples", "2",
                   "--diversity-prompts", "2", "--max-new-tokens", "4", "--methods", "base,sft,paper,default",
                   "--quiet")
    assert code == 0
    root = results / "arith"
    for name in ("results.csv", "results.json", "results.md", "accuracy.png", "scores.png"):
        assert (root / name).is_file(), name
    data = json.loads((root / "results.json").read_text())
    assert [r["method"] for r in data["runs"]] == ["base", "sft", "paper", "default"]
    assert "| default | 1 |" in (root / "results.md").read_text()
    assert "| base | 1 |" in capsys.readouterr().out
    npo = root / "runs" / "seed0" / "default"
    assert json.loads((npo / "eval.json").read_text())["token_auroc"] is not None
    # default and paper differ in their reference setting (cross-fit vs subset): both were scored
    assert (npo / "score" / "scores.npy").is_file()


def test_bench_adds_seeds_to_finished_rows_and_refuses_other_settings(tiny_model_dir, tmp_path, capsys):
    args = ("bench", "arith", "--model", tiny_model_dir, "--results", tmp_path, "--n-train", "8", "--n-test", "2",
            "--max-steps", "1", "--batch-size", "4", "--samples", "0", "--max-new-tokens", "2", "--methods",
            "base,sft", "--quiet")
    assert run_cli(*args) == 0
    first = json.loads((tmp_path / "arith" / "results.json").read_text())["runs"]
    assert run_cli(*args, "--seeds", "2") == 0
    second = json.loads((tmp_path / "arith" / "results.json").read_text())["runs"]
    assert second[:2] == first  # seed 0 reused as it was, not re-evaluated
    assert [(r["seed"], r["method"]) for r in second[2:]] == [(1, "base"), (1, "sft")]
    assert "| sft | 2 |" in (tmp_path / "arith" / "results.md").read_text()
    assert run_cli(*args, "--noise", "0.5") == 2  # other settings: refused, the earlier results are kept
    assert "holds a bench with other settings (noise 0.3 there, 0.5 now)" in capsys.readouterr().err
    assert json.loads((tmp_path / "arith" / "results.json").read_text())["runs"] == second
    # a later bench for another method takes the cross-fit reference and scores of an earlier one instead of retraining
    assert run_cli(*args[:-3], "--methods", "ignore", "--quiet") == 0
    assert run_cli(*args[:-3], "--methods", "default-ref", "--quiet") == 0
    seed0 = tmp_path / "arith" / "runs" / "seed0"
    for stage in ("reference", "score"):
        assert (seed0 / "default-ref" / stage / DONE_MARKER).read_bytes() == (seed0 / "ignore" / stage / DONE_MARKER
                                                                              ).read_bytes()
    # hard-linked, not copied: nine methods per seed must not hold nine copies of a stage's files; the reference
    # models themselves are deleted once scored
    shared = "score/ce_ref.npy"
    assert (seed0 / "default-ref" / shared).stat().st_ino == (seed0 / "ignore" / shared).stat().st_ino
    assert not list((seed0 / "ignore" / "reference").glob("model-*"))
    assert "| default-ref | 1 |" in (tmp_path / "arith" / "results.md").read_text()
    # a tuned variant is one more row of the same bench: its setting reaches the run, the reference is shared
    assert run_cli(*args[:-3], "--methods", "default:lambda_max=0.5", "--quiet") == 0
    variant = seed0 / "default:lambda_max=0.5"
    assert yaml.safe_load((variant / "config.yaml").read_text())["train"]["lambda_max"] == 0.5
    assert (variant / "reference" / DONE_MARKER).read_bytes() == (seed0 / "ignore" / "reference" / DONE_MARKER
                                                                   ).read_bytes()
    assert "| default:lambda_max=0.5 | 1 |" in (tmp_path / "arith" / "results.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["arith", "numwords"])
def test_trusted_bench_runs_every_method_with_the_trusted_reference(name, tiny_model_dir, tmp_path):
    results = tmp_path / "results"
    assert run_cli("bench", name, "--model", tiny_model_dir, "--results", results, "--noise-kind", "systematic",
                   "--trusted", "6", "--n-train", "16", "--n-test", "8", "--max-steps", "1", "--batch-size", "4",
                   "--trusted-epochs", "1", "--samples", "0", "--sampled", "2", "--sampled-prompts", "3",
                   "--max-new-tokens", "3", "--quiet") == 0
    root = results / name
    data = json.loads((root / "results.json").read_text())
    from forgetune.bench.noisy import TRUSTED_METHODS

    assert [r["method"] for r in data["runs"]] == list(TRUSTED_METHODS)
    seed0 = root / "runs" / "seed0"
    trusted = root / "data" / "seed0" / "trusted.jsonl"
    train = [json.loads(line) for line in (root / "data" / "seed0" / "train.jsonl").read_text().splitlines()]
    assert sum(r["meta"].get("trusted", False) for r in train) == 6  # every method's data holds the trusted set
    for method in ("default", "paper", "filter", "oracle-forget"):
        cfg = yaml.safe_load((seed0 / method / "config.yaml").read_text())
        assert cfg["reference"]["reference_data"] == str(trusted), method
    cfg = yaml.safe_load((seed0 / "sft-trusted" / "config.yaml").read_text())
    assert cfg["data"]["data"] == str(trusted)
    cfg = yaml.safe_load((seed0 / "clean-sft" / "config.yaml").read_text())
    assert cfg["data"]["data"].endswith("train_clean.jsonl")
    oracle = json.loads((seed0 / "oracle-ignore" / "eval.json").read_text())
    assert oracle["token_precision"] == oracle["token_recall"] == 1.0  # the oracle's negatives are the wrong tokens
    row = data["runs"][1]
    assert len(row["hits"]) == 8 and set(row["hits"]) <= {"0", "1"}
    assert {"exact_match_slice", "exact_match_off_slice", "clean_nll", "sampled_em_t1", "sampled_em_t0.7"} <= set(row)
    default = next(e for e in data["summary"] if e["method"] == "default")
    assert default["vs_sft"]["seeds"] == [0] and len(default["vs_sft"]["ci95"]) == 2
    assert "EM − sft (points) [95 % CI]" in (root / "results.md").read_text()


def test_trusted_bench_is_refused_where_no_trusted_split_exists(tiny_model_dir, tmp_path, capsys):
    assert run_cli("bench", "facts", "--model", tiny_model_dir, "--results", tmp_path, "--trusted", "5",
                   "--methods", "sft") == 2
    assert "the facts benchmark has no trusted split; use one of arith, numwords" in capsys.readouterr().err
    assert run_cli("bench", "arith", "--model", tiny_model_dir, "--results", tmp_path, "--methods",
                   "sft-trusted") == 2
    assert "needs a trusted set: pass --trusted N" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["gsm8k", "facts", "truthfulqa"])
def test_every_benchmark_runs_end_to_end(name, tiny_model_dir, tmp_path):
    data = fake_truthfulqa(fake_gsm8k(tmp_path))
    assert run_cli("bench", name, "--model", tiny_model_dir, "--results", tmp_path / "results", "--data-dir", data,
                   "--n-train", "12", "--n-test", "4", "--max-steps", "1", "--batch-size", "4", "--samples", "0",
                   "--max-new-tokens", "3", "--methods", "base,default", "--quiet") == 0
    results = json.loads((tmp_path / "results" / name / "results.json").read_text())
    assert [r["method"] for r in results["runs"]] == ["base", "default"]
    assert results["config"]["n_train"] == 12
    sampled = 0 if name in ("gsm8k", "truthfulqa") else 4  # graded samples off where exact match sits at the floor
    assert results["config"]["sampled"] == sampled
    assert all((r["sampled_em_t1"] is None) == (sampled == 0) for r in results["runs"])
    headline = "mc_acc" if name == "truthfulqa" else "exact_match"
    assert all(0.0 <= r[headline] <= 1.0 for r in results["runs"])
    assert results["runs"][1]["example_auroc_min"] is not None  # the noise labels reached detection


def test_bench_rejects_unknown_method(tiny_model_dir, tmp_path, capsys):
    assert run_cli("bench", "arith", "--model", tiny_model_dir, "--results", tmp_path, "--methods", "sft,magic") == 2
    assert "unknown method 'magic'" in capsys.readouterr().err
    assert run_cli("bench", "arith", "--model", tiny_model_dir, "--results", tmp_path, "--methods",
                   "default:lamda_max=0.5") == 2  # a misspelt setting fails before anything trains
    assert "method 'default:lamda_max=0.5': unknown config field 'lamda_max'" in capsys.readouterr().err
    assert not (tmp_path / "arith").exists()


def test_demo_runs_and_prints_split_and_answers(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    assert run_cli("demo", "--model", tiny_model_dir, "--output", out, "--max-steps", "1", "--batch-size", "8",
                   "--max-new-tokens", "3", "--quiet") == 0
    printed = capsys.readouterr().out
    assert "== token split" in printed and "wrong tokens" in printed
    # both rankings' detection is shown, the one in force starred
    assert "*--rank-by difference (CE_base - CE_ref)" in printed and " --rank-by reference (-CE_ref)" in printed
    assert "exact match: base" in printed and "== stages" in printed
    assert set(json.loads((out / "demo_eval.json").read_text())) == {"base", "trained"}


def test_missing_reference_data_and_fp16_training_are_clear_errors(tiny_model_dir, arith_jsonl, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("run", *base_args(tiny_model_dir, arith_jsonl, out, "--reference-data", tmp_path / "no.jsonl")) == 2
    assert "reference data file not found" in capsys.readouterr().err
    assert run_cli("train", *base_args(tiny_model_dir, arith_jsonl, out, "--objective", "sft",
                                       "--dtype", "float16")) == 2
    assert "float16" in capsys.readouterr().err


def test_checkpoints_of_another_config_are_not_resumed(tiny_model_dir, arith_jsonl, tmp_path):
    """A stale checkpoint (other stage key) is deleted, so the run trains from the base for its own config."""
    out = tmp_path / "run"
    stale = out / "train" / "checkpoints" / "checkpoint-99"
    stale.mkdir(parents=True)
    (out / "train" / "checkpoints" / "stage_key").write_text("another-config")
    assert run_cli("run", *base_args(tiny_model_dir, arith_jsonl, out, "--objective", "sft", "--save-steps", "1")) == 0
    assert json.loads((out / "summary.json").read_text())["stages"]["train"]["steps"] == 2
    assert not (out / "train" / "checkpoints").exists()  # cleaned after a finished training


def test_bench_targets_are_computed_from_the_rows_and_can_fail():
    from forgetune.bench.harness import summarise, versus
    from forgetune.bench.noisy import METRICS
    from forgetune.bench.targets import targets_markdown

    def row(method, seed, hits, off=0.9):
        return {"method": method, "seed": seed, "seconds": 60.0, "hits": hits, "exact_match": hits.count("1") / 10,
                "exact_match_off_slice": off, "token_auroc": 0.95}

    # default wins 4 of 10 items over sft on each seed; filter ties default; off-slice cost 0.1
    rows = [r for seed in range(3) for r in (row("sft", seed, "0000011111"), row("default", seed, "1111011111", 0.8),
                                             row("filter", seed, "1111011111"))]

    def lines_of(rows, default_methods):
        text = targets_markdown("arith", rows, summarise(rows, ["sft", "default", "filter"], METRICS), versus,
                                default_methods)
        return {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}

    lines = lines_of(rows, ("sft", "default", "filter"))
    assert "**met**" in lines["default >= +5 exact-match points over sft, interval above 0"]
    assert "+40.0 points" in lines["default >= +5 exact-match points over sft, interval above 0"]
    assert "missed" in lines["default above filter (mean)"]  # a tie is not a win
    assert "n/a" in lines["default above sft-trusted (mean)"]  # not run: cannot be judged
    assert "missed" in lines["off-slice cost <= 2 points"]
    assert "missed" in lines[">= 3 seeds and >= 400 test items"]  # 10 items
    timing = "one seed of the default methods <= 30 min on this machine"
    assert "**met**" in lines[timing]  # 3 x 60 s
    assert "missed" in lines_of([{**r, "seconds": 700.0} for r in rows], ("sft", "default", "filter"))[timing]
    # a bench of some of the default methods cannot tell the default bench's time
    assert "n/a" in lines_of(rows, ("sft", "default", "filter", "clean-sft"))[timing]


def test_generate_eval_and_report_read_a_run_and_never_rewrite_its_config(tiny_model_dir, arith_jsonl, tmp_path,
                                                                         capsys):
    from forgetune.bench.data.arith import make_arith

    out = tmp_path / "run"
    assert run_cli("run", *base_args(tiny_model_dir, arith_jsonl, out)) == 0
    saved = (out / "config.yaml").read_bytes()
    # no --data, no --model: the run's own model and prompts, from its config.yaml
    assert run_cli("generate", "--output", out, "--num-prompts", "2", "--max-new-tokens", "2", "--quiet") == 0
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    records = [json.loads(line) for line in arith_jsonl.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in records[:2]]
    # another prompt file and other training flags apply to this command only
    other = write_jsonl(tmp_path / "other.jsonl", make_arith(3, noise=0.0, seed=8, id_prefix="o"))
    assert run_cli("generate", "--output", out, "--data", other, "--batch-size", "2", "--max-new-tokens", "2",
                   "--quiet") == 0
    assert (out / "config.yaml").read_bytes() == saved
    test = write_jsonl(tmp_path / "test.jsonl", make_arith(3, noise=0.0, seed=11, id_prefix="test"))
    assert run_cli("eval", out, "--data", test, "--samples", "0", "--max-new-tokens", "2", "--quiet") == 0
    results = json.loads((out / "eval.json").read_text())
    assert "memorised_noise" in results and "token_auroc" in results  # the run's own data: its noise metrics
    assert run_cli("report", out, "--examples", "2", "--most-negative", "1", "--quiet") == 0
    assert (out / "config.yaml").read_bytes() == saved
    capsys.readouterr()


def test_eval_chooses_the_extraction_from_the_reference_answers(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import forgetune.evaluate

    pairs = {"What is the opposite of hot?": "cold", "What is the opposite of up?": "down",
             "What is the opposite of early?": "late"}
    test = write_jsonl(tmp_path / "test.jsonl", [{"prompt": q, "completion": a} for q, a in pairs.items()])

    def knows_every_answer(model, tokenizer, prompts, *args, **kwargs):
        return [pairs[p[-1]["content"]] for p in prompts]

    monkeypatch.setattr(forgetune.evaluate, "generate_answers", knows_every_answer)
    report = tmp_path / "eval.json"
    assert run_cli("eval", tiny_model_dir, "--data", test, "--samples", "0", "--report", report, "--quiet") == 0
    results = json.loads(report.read_text())
    assert results["extract"] == "first-line" and results["exact_match"] == 1.0
    printed = capsys.readouterr()
    assert "first-line" in printed.out and "finds no answer" not in printed.err
    # an explicit numeric mode on text answers still grades, and says in one line that it found nothing to grade
    assert run_cli("eval", tiny_model_dir, "--data", test, "--samples", "0", "--report", report,
                   "--extract", "last-number", "--quiet") == 0
    assert json.loads(report.read_text())["exact_match"] == 0.0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "finds no answer" in line]
    assert len(warnings) == 1 and "--extract last-number finds no answer in 3 of the 3 model answers" in warnings[0]


def test_training_logs_and_stage_summaries_print_rounded_numbers(tiny_model_dir, arith_jsonl, tmp_path, capsys):
    import re

    out = tmp_path / "run"
    args = [a for a in base_args(tiny_model_dir, arith_jsonl, out, "--objective", "sft") if a != "--quiet"]
    assert run_cli("run", *args) == 0
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert "{'loss'" not in text and "'train_runtime'" not in text  # transformers' dicts of strings
    assert re.search(r"step 1: loss \d[\d.]*(e-?\d+)?, ", text), text[-2000:]
    summary = text[text.index(f"run: {out}"):]
    assert "train" in summary and not re.search(r"\d\.\d{5,}", summary), summary  # 4 significant digits


def test_reference_models_are_deleted_after_scoring_unless_kept(tiny_model_dir, arith_jsonl, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    args = base_args(tiny_model_dir, arith_jsonl, out)
    assert run_cli("run", *args) == 0
    assert (out / "reference" / "plan.json").is_file() and not list((out / "reference").rglob("*.safetensors"))
    scores = np.load(out / "score" / "scores.npy")
    trained = (out / "reference" / DONE_MARKER).stat().st_mtime_ns
    assert run_cli("run", *args) == 0  # unchanged config: the reference stage is still done, nothing retrained
    assert (out / "reference" / DONE_MARKER).stat().st_mtime_ns == trained
    shutil.rmtree(out / "score")
    capsys.readouterr()
    assert run_cli("score", *args) == 2
    err = capsys.readouterr().err
    assert "reference models were deleted after an earlier scoring; run `forgetune reference`" in err
    assert run_cli("run", *args) == 0  # the scores must be recomputed: the references are trained again
    assert (out / "reference" / DONE_MARKER).stat().st_mtime_ns != trained
    np.testing.assert_allclose(np.load(out / "score" / "scores.npy"), scores, rtol=0, atol=1e-5)
    assert not list((out / "reference").rglob("*.safetensors"))
    kept = tmp_path / "kept"
    assert run_cli("run", *base_args(tiny_model_dir, arith_jsonl, kept, "--keep-references")) == 0
    assert len(list((kept / "reference").glob("model-*/model.safetensors"))) == 2
    assert marker_key(kept, "reference") == marker_key(out, "reference")  # keeping them is no other reference


def test_lora_references_are_saved_as_adapters(tiny_model_dir, arith_jsonl, tmp_path):
    out = tmp_path / "run"
    assert run_cli("run", *base_args(tiny_model_dir, arith_jsonl, out, "--lora", "--lora-r", "4",
                                     "--learning-rate", "1e-2", "--keep-references")) == 0
    for k in range(2):
        model_dir = out / "reference" / f"model-{k}"
        assert (model_dir / "adapter_config.json").is_file() and (model_dir / "adapter_model.safetensors").is_file()
        assert not (model_dir / "config.json").exists() and not (model_dir / "model.safetensors").exists()
    ce_base, ce_ref = np.load(out / "score" / "ce_base.npy"), np.load(out / "score" / "ce_ref.npy")
    assert np.isfinite(ce_ref).all() and not np.array_equal(ce_base, ce_ref)  # scored by base + adapter


def test_python_api_logs_each_stage_and_records_the_real_step_count(tiny_model_dir, arith_jsonl, tmp_path, caplog):
    import logging

    from forgetune import config, pipeline

    handlers = list(logging.getLogger().handlers)
    caplog.set_level(logging.INFO, logger="forgetune")
    cfg = config.resolve(flags={"model": str(tiny_model_dir), "data": str(arith_jsonl), "output": str(tmp_path / "r"),
                                "max_steps": 3, "batch_size": 4, "score_batch_size": 5})  # 3 steps, logged every 5
    run = pipeline.open_run(cfg)
    for stage in (pipeline.reference, pipeline.score, pipeline.partition, pipeline.train):
        stage(run)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("forgetune")]
    for stage in pipeline.STAGES:
        assert f"{stage}: starting" in messages, messages
        assert any(m.startswith(f"{stage}: done in ") for m in messages), messages
    assert logging.getLogger().handlers == handlers  # the library leaves logging to its caller
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["stages"]["train"]["steps"] == 3


def test_rank_by_labels_without_labels_is_one_clear_line(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(8)])
    assert run_cli("run", *base_args(tiny_model_dir, data, tmp_path / "run", "--rank-by", "labels",
                                     "--objective", "ignore")) == 2
    assert "--rank-by labels needs records whose meta holds clean_completion" in capsys.readouterr().err


def test_report_to_tensorboard_writes_the_objectives_terms_and_leaves_the_cache_alone(tiny_model_dir, arith_jsonl,
                                                                                       tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert run_cli("run", *base_args(tiny_model_dir, arith_jsonl, out, "--cross-fit", "2")) == 0
    trained = (out / "train" / DONE_MARKER).stat().st_mtime_ns
    # a tracker changes where the logs go, not the result: the finished stage is not redone
    assert run_cli("run", *base_args(tiny_model_dir, arith_jsonl, out, "--cross-fit", "2", "--report-to",
                                     "tensorboard")) == 0
    assert (out / "train" / DONE_MARKER).stat().st_mtime_ns == trained
    assert run_cli("train", *base_args(tiny_model_dir, arith_jsonl, out, "--cross-fit", "2", "--report-to",
                                       "tensorboard", "--lambda-max", "0.5")) == 0
    events = EventAccumulator(str(out / "train" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/ce_pos", "train/ce_neg", "train/neg_term", "train/lambda", "train/tokens_neg"} <= tags
    history = [h for h in json.loads((out / "train" / "log_history.json").read_text()) if "ce_pos" in h]
    assert [e.value for e in events.Scalars("train/ce_pos")] == pytest.approx([h["ce_pos"] for h in history])
    capsys.readouterr()
    assert run_cli("train", *base_args(tiny_model_dir, arith_jsonl, out, "--report-to", "tensorbored")) == 2
    assert "unknown --report-to tensorbored; choose none or a comma list of" in capsys.readouterr().err


def test_eval_data_during_training_and_the_best_checkpoint_kept(tiny_model_dir, arith_jsonl, tmp_path):
    """eval_loss (the held-out responses' mean CE) every step in log_history.json; with load_best_model_at_end the
    saved model is the checkpoint whose eval_loss was lowest, not the last one."""
    from forgetune.bench.data.arith import held_out

    held = write_jsonl(tmp_path / "held.jsonl", held_out(6, seed=3, train=[]))
    out = tmp_path / "run"
    # a learning rate so high that the held-out CE rises after a step: the best checkpoint is not the last
    flags = ["--objective", "sft", "--max-steps", "4", "--eval-data", str(held), "--eval-steps", "1",
             "--load-best-model-at-end", "--save-total-limit", "2", "--learning-rate", "2.0"]
    assert run_cli("run", *base_args(tiny_model_dir, arith_jsonl, out, *flags)) == 0
    history = json.loads((out / "train" / "log_history.json").read_text())
    evals = {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h}
    assert sorted(evals) == [1, 2, 3, 4]
    best = min(evals, key=evals.get)
    summary = json.loads((out / "summary.json").read_text())["stages"]["train"]
    assert summary["best_eval_loss"] == pytest.approx(evals[best])
    # the saved model's eval_loss, computed as the Trainer does (batches of 4 in order, each batch's mean response CE
    # weighted by its size) is the best step's: the best checkpoint came back, not the last one
    from forgetune.data.collator import Collator, make_features
    from forgetune.data.formats import load_examples
    from forgetune.scoring.token_logps import response_token_ce

    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    features = make_features(load_examples(held, tokenizer)[0])
    losses = []
    for i in range(0, len(features), 4):
        batch = Collator(tokenizer.pad_token_id)(features[i:i + 4])
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        losses += [response_token_ce(logits, batch["labels"]).mean().item()] * len(features[i:i + 4])
    assert np.mean(losses) == pytest.approx(evals[best], rel=1e-4)
    assert best != 4, evals  # the run was built so that the last step is not the best
    assert not (out / "train" / "checkpoints").exists()


def test_group_by_length_batches_similar_lengths_and_runs(tiny_model_dir, tmp_path, tokenizer):
    """--group-by-length: transformers' length-grouped sampler (megabatches of a quarter of the data, sorted), fed each
    example's length; less than half the padding of the random order on data of mixed lengths; `run` and `unlearn`
    train with it."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from forgetune.data.collator import make_features
    from forgetune.data.formats import load_examples
    from forgetune.trainer import example_lengths
    from forgetune.unlearn import ForgetRetainDataset

    rows = [{"prompt": "Say " + "very " * (i % 17) + "much.", "completion": "Yes " * (1 + i % 5)} for i in range(320)]
    data = write_jsonl(tmp_path / "mixed.jsonl", rows)
    features = make_features(load_examples(data, tokenizer)[0])
    lengths = example_lengths(features)
    assert example_lengths(ForgetRetainDataset(features, features[:3])) == lengths

    def padding(order):
        batches = [order[i:i + 8] for i in range(0, len(order), 8)]
        return sum(max(lengths[j] for j in b) * len(b) - sum(lengths[j] for j in b) for b in batches) / sum(lengths)

    torch.manual_seed(0)
    grouped = padding(list(LengthGroupedSampler(8, lengths=lengths)))
    shuffled = padding(torch.randperm(len(lengths)).tolist())
    assert grouped < shuffled / 2, (grouped, shuffled)
    out = tmp_path / "run"
    assert run_cli("run", *base_args(tiny_model_dir, data, out, "--objective", "sft", "--group-by-length")) == 0
    assert run_cli("unlearn", "--model", tiny_model_dir, "--forget", data, "--retain", data, "--output",
                   tmp_path / "unl", "--max-steps", "2", "--group-by-length", "--quiet") == 0


def test_eval_answers_logs_the_exact_match_of_the_models_own_answers(tokenizer, arith_jsonl, tmp_path):
    """--eval-answers: at every evaluation the held-out prompts are answered greedily and eval_exact_match logged.
    Learning rate 0 keeps the base model, so references set to the base's own answers for half the prompts (and to
    something it never says for the others) must give exactly 0.5 at every step."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from forgetune.bench.data.arith import held_out
    from forgetune.generation import generate_answers

    # a random Llama whose greedy answers differ from prompt to prompt (the fixture's small init answers "" to all)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0))
    model_dir = tmp_path / "model-under-test"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    rows = held_out(12, seed=3, train=[])
    answers = generate_answers(model, tokenizer, [[{"role": "user", "content": r["prompt"]}] for r in rows], 8)
    kept = list(dict(zip(answers, rows, strict=True)).items())[:6]  # six prompts with six different answers
    assert len(kept) == 6 and all(a.strip() for a, _ in kept)
    kept = [(r, a) for a, r in kept]
    held = write_jsonl(tmp_path / "held.jsonl", [
        {"prompt": r["prompt"], "completion": a if i < 3 else "never said"} for i, (r, a) in enumerate(kept)])
    out = tmp_path / "run"
    flags = ["--objective", "sft", "--max-steps", "2", "--eval-data", str(held), "--eval-steps", "1",
             "--eval-answers", "exact", "--eval-max-new-tokens", "8", "--learning-rate", "0"]
    assert run_cli("run", *base_args(model_dir, arith_jsonl, out, *flags)) == 0
    history = json.loads((out / "train" / "log_history.json").read_text())
    matches = {h["step"]: h["eval_exact_match"] for h in history if "eval_exact_match" in h}
    assert matches == {1: 0.5, 2: 0.5}
    assert json.loads((out / "summary.json").read_text())["stages"]["train"]["eval_exact_match"] == 0.5
    assert run_cli("run", *base_args(model_dir, arith_jsonl, out, "--eval-answers", "exact")) == 2
