"""--trust-remote-code and --attn-implementation reach every model load: a model whose class lives in its own
repository's code loads only with the flag (one line without it), and the attention kernel asked for is the one used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import build_tiny_llama
from forgetune.cli import main
from forgetune.config import ModelConfig
from forgetune.errors import ForgetuneError
from forgetune.models import load_model, load_options, load_trainable

CONFIGURATION = """from transformers import LlamaConfig


class TinyRemoteConfig(LlamaConfig):
    model_type = "tiny-remote"
"""
MODELING = """from transformers import LlamaForCausalLM

from .configuration_tiny import TinyRemoteConfig


class TinyRemoteForCausalLM(LlamaForCausalLM):
    config_class = TinyRemoteConfig
"""


@pytest.fixture(scope="module")
def remote_code_model(tmp_path_factory, tokenizer) -> Path:
    """The tiny Llama saved as a model type transformers does not know, its classes in the folder's own files."""
    path = tmp_path_factory.mktemp("tiny-remote")
    build_tiny_llama(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="tiny-remote", architectures=["TinyRemoteForCausalLM"],
                  auto_map={"AutoConfig": "configuration_tiny.TinyRemoteConfig",
                            "AutoModelForCausalLM": "modeling_tiny.TinyRemoteForCausalLM"})
    (path / "config.json").write_text(json.dumps(config))
    (path / "configuration_tiny.py").write_text(CONFIGURATION)
    (path / "modeling_tiny.py").write_text(MODELING)
    return path


def test_remote_code_loads_only_when_trusted(remote_code_model):
    with pytest.raises(ForgetuneError, match="--trust-remote-code"):
        load_model(remote_code_model)
    model = load_trainable(remote_code_model, ModelConfig(trust_remote_code=True, attn_implementation="eager"))
    assert type(model).__name__ == "TinyRemoteForCausalLM"
    assert model.config._attn_implementation == "eager"


def test_attn_implementation_is_the_one_asked_for(tiny_model_dir):
    for kernel in ("eager", "sdpa"):
        model = load_model(tiny_model_dir, **load_options(ModelConfig(attn_implementation=kernel)))
        assert model.config._attn_implementation == kernel


def test_cli_run_passes_both_through(remote_code_model, arith_jsonl, tmp_path, capsys):
    args = ["run", "--model", str(remote_code_model), "--data", str(arith_jsonl), "--max-steps", "1",
            "--batch-size", "4", "--cross-fit", "2", "--reference-max-steps", "1", "--quiet"]
    assert main([*args, "--output", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trust-remote-code" in err[0], err
    trusted = ["--trust-remote-code", "--attn-implementation", "eager"]
    assert main([*args, "--output", str(tmp_path / "run"), *trusted]) == 0
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["model_type"] == "tiny-remote"
