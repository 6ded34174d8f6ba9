"""`--model org/name` and `--data org/name` resolve the way transformers and datasets resolve a Hub id: from a
hub-layout cache (built here in a temp HF_HOME; nothing is fetched, HF_HUB_OFFLINE=1), or one line saying how to get
it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from forgetune.cli import main
from forgetune.models import resolve_model_path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root: Path, repo_id: str, files: Path, kind: str = "models") -> Path:
    """HF_HOME/hub/models--org--name/{refs/main, snapshots/COMMIT/...}: the layout huggingface_hub downloads into."""
    repo = root / "hub" / f"{kind}--{repo_id.replace('/', '--')}"
    shutil.copytree(files, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return repo / "snapshots" / COMMIT


@pytest.fixture
def offline_hub(tmp_path, tiny_model_dir, arith_jsonl, monkeypatch):
    """A model org/tiny and a dataset org/tiny-data (train and test splits, as a Hub dataset repo lays them out)."""
    import huggingface_hub.constants as constants

    snapshot = hub_cache(tmp_path / "hf", "org/tiny", tiny_model_dir)
    repo = tmp_path / "dataset-repo"
    (repo / "data").mkdir(parents=True)
    shutil.copy(arith_jsonl, repo / "data" / "train.jsonl")
    lines = arith_jsonl.read_text().splitlines()
    (repo / "data" / "test.jsonl").write_text("\n".join(lines[:5]) + "\n")
    hub_cache(tmp_path / "hf", "org/tiny-data", repo, kind="datasets")
    monkeypatch.setenv("FORGETUNE_CACHE", str(tmp_path / "forgetune-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))  # read once, at import
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return snapshot


def test_a_hub_id_resolves_from_the_cache_and_runs(offline_hub, arith_jsonl, tmp_path):
    assert resolve_model_path("org/tiny") == offline_hub
    out = tmp_path / "run"
    assert main(["run", "--model", "org/tiny", "--data", str(arith_jsonl), "--output", str(out), "--objective", "sft",
                 "--max-steps", "1", "--batch-size", "4", "--quiet"]) == 0
    assert (out / "model" / "config.json").is_file()


def test_a_dataset_name_and_its_split_resolve_from_the_cache(offline_hub, arith_jsonl, tmp_path):
    from forgetune.data.formats import load_records

    assert len(load_records("org/tiny-data")) == len(arith_jsonl.read_text().splitlines())  # the train split
    out = tmp_path / "run"
    assert main(["run", "--model", "org/tiny", "--data", "org/tiny-data", "--data-split", "test", "--output", str(out),
                 "--objective", "sft", "--max-steps", "1", "--batch-size", "4", "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["data"]["examples"] == 5


def test_an_unknown_split_is_one_line_naming_the_splits(offline_hub, tmp_path, capsys):
    assert main(["run", "--model", "org/tiny", "--data", "org/tiny-data", "--data-split", "dev", "--output",
                 str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("forgetune: error: org/tiny-data: ") and "dev" in err and "\n" not in err


def test_a_dataset_name_missing_from_the_cache_is_one_line(offline_hub, tmp_path, capsys):
    assert main(["run", "--model", "org/tiny", "--data", "org/absent-data", "--output", str(tmp_path / "run"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("forgetune: error: org/absent-data: not in the local Hugging Face cache (")
    assert "hf download --repo-type dataset org/absent-data" in err and "\n" not in err


def test_a_hub_id_missing_from_the_cache_is_one_line(offline_hub, arith_jsonl, tmp_path, capsys):
    assert main(["run", "--model", "org/absent", "--data", str(arith_jsonl), "--output", str(tmp_path / "run"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("forgetune: error: org/absent: not in the local Hugging Face cache (") and "\n" not in err
    assert "hf download org/absent" in err


@pytest.mark.slow
def test_a_real_process_reads_hf_home_and_the_offline_flag(tmp_path, tiny_model_dir, arith_jsonl):
    """The library reads the user's HF_HOME and HF_HUB_OFFLINE as transformers does (set before it starts)."""
    hub_cache(tmp_path / "hf", "org/tiny", tiny_model_dir)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    argv = ["run", "--model", "org/tiny", "--data", str(arith_jsonl), "--output", str(tmp_path / "run"), "--objective",
            "sft", "--max-steps", "1", "--batch-size", "4", "--quiet"]
    result = subprocess.run([sys.executable, "-m", "forgetune", *argv], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_data_option_takes_a_dataset_name(offline_hub, tmp_path):
    """The forget and retain sets of unlearning and a trusted reference file name their datasets the same way."""
    out = tmp_path / "unl"
    assert main(["unlearn", "--model", "org/tiny", "--forget", "org/tiny-data", "--retain", "org/tiny-data",
                 "--output", str(out), "--max-steps", "1", "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["stages"]["unlearn"]["steps"] == 1
    run = tmp_path / "run"
    assert main(["run", "--model", "org/tiny", "--data", "org/tiny-data", "--reference-data", "org/tiny-data",
                 "--output", str(run), "--max-steps", "1", "--batch-size", "4", "--score-batch-size", "8",
                 "--quiet"]) == 0
    assert json.loads((run / "summary.json").read_text())["stages"]["reference"]["mode"] == "reference_data"
