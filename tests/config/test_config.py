"""Config resolution (defaults < preset < YAML < flags), validation, YAML round trip; atomic writes and markers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from forgetune import ForgetuneError, io
from forgetune.config import (
    PRESETS,
    DataConfig,
    PartitionConfig,
    RunConfig,
    TrainConfig,
    dump_yaml,
    field_index,
    from_dict,
    load_yaml,
    resolve,
)


def write_yaml(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- defaults and precedence


def test_defaults():
    cfg = resolve()
    assert cfg == RunConfig().validate()  # validation fills in the chosen losses' declared settings
    # forgetune's defaults (docs/demo.md): three-way split at 0, neutral tokens learned, bounded NPO term per token.
    assert cfg.partition == PartitionConfig(rho=0.7, granularity="global", rank_by="difference", negative_below=0.0,
                                           neutral="learn")
    assert (cfg.train.objective, cfg.train.objective_args) == (
        "forget-npo", {"lambda_max": 0.25, "lambda_min": 0.0, "negative_mean": "tokens", "npo_beta": 0.1})
    assert cfg.train.objective_args["negative_mean"] == "tokens"
    assert cfg.reference.cross_fit == 2
    assert cfg.data == DataConfig(data=None, format="auto", max_length=512, system_prompt=None)
    assert cfg.preset is None and cfg.output is None


def test_field_names_unique_and_typed():
    index = field_index()
    assert index["rho"].section == "partition" and index["rho"].type is float
    assert index["data"].section == "data" and index["data"].type is str
    assert index["model"].section == "model"
    assert index["output"].section is None
    assert index["reference_count"].type is int  # `int | None` -> int
    assert all(info.help for info in index.values())


def test_precedence_defaults_preset_yaml_flags(tmp_path):
    """cross_fit: default 2, paper preset 1, YAML 3, flag 5; each layer wins over the previous one."""
    assert resolve().reference.cross_fit == 2
    assert resolve(flags={"preset": "paper"}).reference.cross_fit == 1
    path = write_yaml(tmp_path, "reference:\n  cross_fit: 3\ntrain:\n  lambda_max: 0.5\n")
    assert resolve(path, {"preset": "paper"}).reference.cross_fit == 3
    cfg = resolve(path, {"preset": "paper", "cross_fit": 5})
    assert cfg.reference.cross_fit == 5
    assert cfg.train.objective_args["lambda_max"] == 0.5  # YAML beats the preset's 0.25
    assert cfg.partition.rho == 0.7  # untouched everywhere: the default


def test_preset_named_in_yaml(tmp_path):
    cfg = resolve(write_yaml(tmp_path, "preset: paper\npartition:\n  rho: 0.5\n"))
    assert cfg.preset == "paper"
    assert cfg.reference.cross_fit == 1
    assert cfg.partition.rho == 0.5


def test_paper_preset_values():
    cfg = resolve(flags={"preset": "paper"})
    assert cfg.reference.cross_fit == 1
    assert cfg.reference.reference_fraction == 0.3
    assert cfg.partition == PartitionConfig(rho=0.7, granularity="global", rank_by="difference", negative_below=None,
                                           neutral="ignore")
    assert cfg.train.objective == "forget" and cfg.train.max_grad_norm == 1.0
    assert cfg.train.objective_args == {"lambda_max": 0.25, "lambda_min": 0.0, "negative_mean": "negatives"}
    assert set(PRESETS) >= {"paper"}


def test_preset_resets_a_default_to_none(tmp_path):
    """The paper preset sets negative_below to None; the YAML is applied after the preset, so its 0.0 wins."""
    cfg = resolve(write_yaml(tmp_path, "partition:\n  negative_below: 0.0\n"), {"preset": "paper"})
    assert cfg.partition.negative_below == 0.0


def test_sectioned_and_flat_yaml_are_equivalent(tmp_path):
    sectioned = write_yaml(tmp_path, "partition:\n  rho: 0.5\n  granularity: sequence\ntrain:\n  objective: ignore\n",
                           "a.yaml")
    flat = write_yaml(tmp_path, "rho: 0.5\ngranularity: sequence\nobjective: ignore\n", "b.yaml")
    a, b = resolve(sectioned), resolve(flat)
    assert a == b
    assert (a.partition.rho, a.partition.granularity, a.train.objective) == (0.5, "sequence", "ignore")


def test_data_key_is_both_section_and_field(tmp_path):
    as_section = resolve(write_yaml(tmp_path, "data:\n  data: x.jsonl\n  max_length: 64\n", "a.yaml"))
    as_field = resolve(write_yaml(tmp_path, "data: x.jsonl\n", "b.yaml"))
    assert as_section.data.data == as_field.data.data == "x.jsonl"
    assert as_section.data.max_length == 64
    assert as_field.data.max_length == 512
    assert resolve(flags={"data": "y.jsonl"}).data.data == "y.jsonl"


def test_model_key_is_both_section_and_field(tmp_path):
    cfg = resolve(write_yaml(tmp_path, "model:\n  model: /models/x\n  lora: true\n"))
    assert (cfg.model.model, cfg.model.lora) == ("/models/x", True)
    assert resolve(flags={"model": "/models/y"}).model.model == "/models/y"


def test_coercions(tmp_path):
    """int -> float for float fields, 'true'/'no' strings -> bool, numbers -> str for str fields, null -> None."""
    cfg = resolve(write_yaml(tmp_path, "rho: 1\nlora: 'yes'\nmerge_lora: 'no'\ndata: 123\nreference_count: null\n"))
    assert cfg.partition.rho == 1.0 and isinstance(cfg.partition.rho, float)
    assert cfg.model.lora is True and cfg.model.merge_lora is False
    assert cfg.data.data == "123"
    assert cfg.reference.reference_count is None


def test_empty_yaml_is_defaults(tmp_path):
    assert resolve(write_yaml(tmp_path, "# nothing here\n")) == RunConfig().validate()


# ---------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"rho": 1.5}, r"rho must be in \[0, 1\], got 1\.5"),
        ({"rho": -0.1}, r"rho must be in \[0, 1\]"),
        ({"lambda_max": -0.25}, r"lambda_max must be a finite number >= 0, got -0\.25"),
        ({"lambda_min": -1.0}, "lambda_min must be a finite number >= 0"),
        ({"lambda_max": float("inf")}, "lambda_max must be a finite number"),
        ({"lambda_min": 0.5, "lambda_max": 0.25}, r"lambda_min \(0\.5\) must not exceed lambda_max \(0\.25\)"),
        ({"granularity": "token"}, "granularity must be global, sequence or batch"),
        ({"negative_below": float("nan")}, "negative_below must be a finite number"),
        ({"rank_by": "base"}, "rank_by must be difference, reference or labels, got 'base'"),
        ({"cross_fit": 0}, "cross_fit must be >= 1"),
        ({"reference_fraction": 0.0}, r"reference_fraction must be in \(0, 1\]"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"max_length": 0}, "max_length must be >= 1"),
        ({"dtype": "float8"}, "dtype must be auto, float32, bfloat16 or float16"),
        ({"learning_rat": 1e-4}, "command line: unknown config field 'learning_rat'"),
        ({"rho": "high"}, r"command line: field 'rho' must be float, got 'high'"),
        ({"batch_size": 2.5}, "field 'batch_size' must be int, got 2.5"),
        ({"batch_size": True}, "field 'batch_size' must be int, got True"),
        ({"lora": "maybe"}, "field 'lora' must be bool"),
        ({"data": ["a.jsonl"]}, "field 'data' must be str"),
        ({"preset": "fancy"}, "unknown preset 'fancy': choose one of paper"),
    ],
)
def test_bad_flags_rejected(flags, message):
    with pytest.raises(ForgetuneError, match=message):
        resolve(flags=flags)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("partition:\n  rho: 1.5\n", r"rho must be in \[0, 1\]"),
        ("partition:\n  lr: 0.1\n", r"cfg\.yaml: unknown field 'lr' in section 'partition'"),
        ("train:\n  rho: 0.5\n", "unknown field 'rho' in section 'train'"),
        ("colour: blue\n", "cfg.yaml: unknown config field 'colour'"),
        ("partition:\n  rho: [0.5]\n", "field 'rho' must be float"),
        ("preset: nope\n", "unknown preset 'nope'"),
        ("- just\n- a list\n", "cfg.yaml: a config file must be a mapping"),
    ],
)
def test_bad_yaml_values_rejected(tmp_path, text, message):
    with pytest.raises(ForgetuneError, match=message):
        resolve(write_yaml(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("partition:\n  rho: 0.5\ntrain:\n  objective: forget: ignore\n", 4),
        ("partition:\n  rho: 0.5\n  granularity: [global\ntrain:\n  objective: forget\n", 4),
        ("rho: 0.5\n  objective: sft\n", 2),
    ],
)
def test_invalid_yaml_names_the_line(tmp_path, text, line):
    path = write_yaml(tmp_path, text)
    with pytest.raises(ForgetuneError, match=rf"cfg\.yaml:{line}: invalid YAML"):
        resolve(path)


def test_invalid_yaml_tab_indentation_line(tmp_path):
    path = write_yaml(tmp_path, "train:\n  objective: forget\n\tlambda_max: 0.5\n")
    with pytest.raises(ForgetuneError, match=r"cfg\.yaml:3: invalid YAML"):
        resolve(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ForgetuneError, match=r"nope\.yaml: config file not found"):
        resolve(tmp_path / "nope.yaml")


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    """`learning_rate: 1e-5` is how most configs write a learning rate; YAML 1.1 (PyYAML) loads it as the str '1e-5'."""
    cfg = resolve(write_yaml(tmp_path, "train:\n  learning_rate: 1e-5\n  lambda_max: 5e-1\n"))
    assert cfg.train.learning_rate == 1e-5
    assert cfg.train.objective_args["lambda_max"] == 0.5


# ---------------------------------------------------------------- round trip


def test_dump_load_from_dict_round_trip(tmp_path):
    cfg = resolve(flags={
        "preset": "paper", "output": "runs/x", "data": "train.jsonl", "system_prompt": "Be brief.\nReally.",
        "rho": 0.55, "granularity": "batch", "negative_below": -0.5, "objective": "forget-npo", "npo_beta": 0.2,
        "lambda_min": 0.01, "lambda_max": 0.3, "learning_rate": 3e-6, "lora": True,
        "lora_target_modules": "q_proj,v_proj", "reference_count": 12, "max_steps": 40, "prompts": "yes",
    })
    path = write_yaml(tmp_path, dump_yaml(cfg), "config.yaml")
    again = from_dict(load_yaml(path))
    assert again == cfg
    assert again.generate.prompts == "yes"  # a YAML-ambiguous string survives as a string
    assert again.train.learning_rate == 3e-6
    assert resolve(path) == cfg


def test_dump_yaml_is_sectioned():
    data = load_yaml_text(dump_yaml(RunConfig()))
    assert list(data)[:2] == ["output", "preset"]
    assert data["partition"] == {"rho": 0.7, "granularity": "global", "rank_by": "difference", "negative_below": 0.0,
                                 "neutral": "learn", "unit": "token"}
    assert data["data"]["data"] is None


def load_yaml_text(text: str) -> dict:
    import yaml

    return yaml.safe_load(text)


def test_from_dict_validates():
    with pytest.raises(ForgetuneError, match="rho must be in"):
        from_dict({"partition": {"rho": 2.0}})
    assert from_dict({"train": {"objective": "sft"}}).train == TrainConfig(objective="sft")


# ---------------------------------------------------------------- io


class Boom(Exception):
    pass


def test_atomic_path_file_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with io.atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("hello", encoding="utf-8")
        assert not target.exists()
    assert target.read_text(encoding="utf-8") == "hello"
    assert os.listdir(target.parent) == ["out.txt"]


def test_atomic_path_file_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(Boom), io.atomic_path(target) as tmp:
        tmp.write_text("half", encoding="utf-8")
        raise Boom
    assert os.listdir(tmp_path) == []


def test_atomic_path_file_failure_keeps_previous_version(tmp_path):
    target = tmp_path / "out.txt"
    io.write_text(target, "old")
    with pytest.raises(Boom), io.atomic_path(target) as tmp:
        tmp.write_text("new", encoding="utf-8")
        raise Boom
    assert target.read_text(encoding="utf-8") == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_path_dir_success_replaces_existing(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.bin").write_text("stale", encoding="utf-8")
    with io.atomic_path(target, is_dir=True) as tmp:
        assert tmp.is_dir()
        (tmp / "weights.bin").write_text("w", encoding="utf-8")
    assert sorted(os.listdir(target)) == ["weights.bin"]
    assert os.listdir(tmp_path) == ["model"]


def test_atomic_path_dir_failure_leaves_nothing(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(Boom), io.atomic_path(target, is_dir=True) as tmp:
        (tmp / "nested").mkdir()
        (tmp / "nested" / "part.bin").write_text("partial", encoding="utf-8")
        raise Boom
    assert os.listdir(tmp_path) == []


def test_atomic_path_dir_failure_keeps_previous_version(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "good.bin").write_text("good", encoding="utf-8")
    with pytest.raises(KeyboardInterrupt), io.atomic_path(target, is_dir=True) as tmp:
        (tmp / "bad.bin").write_text("bad", encoding="utf-8")
        raise KeyboardInterrupt
    assert os.listdir(target) == ["good.bin"]
    assert os.listdir(tmp_path) == ["model"]


def test_atomic_artefacts_honour_umask(tmp_path):
    """A file written through atomic_path should get the same mode as one written with open(): 0o644 under umask 022."""
    old = os.umask(0o022)
    try:
        io.write_text(tmp_path / "a.txt", "x")
        with io.atomic_path(tmp_path / "d", is_dir=True) as tmp:
            (tmp / "f").write_text("x", encoding="utf-8")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_json_and_npy_helpers(tmp_path):
    io.write_json(tmp_path / "x.json", {"b": 1, "a": [1, 2]})
    assert io.read_json(tmp_path / "x.json") == {"a": [1, 2], "b": 1}
    array = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    io.save_npy(tmp_path / "x.npy", array)
    loaded = io.load_npy(tmp_path / "x.npy")
    np.testing.assert_array_equal(loaded, array)
    assert loaded.dtype == np.float32
    assert sorted(os.listdir(tmp_path)) == ["x.json", "x.npy"]


def test_hash_obj_stable():
    h = io.hash_obj({"rho": 0.7, "objective": "forget"}, [1, 2, 3], "upstream")
    assert h == io.hash_obj({"objective": "forget", "rho": 0.7}, [1, 2, 3], "upstream")  # key order is irrelevant
    assert len(h) == 16 and int(h, 16) >= 0
    assert h != io.hash_obj({"rho": 0.71, "objective": "forget"}, [1, 2, 3], "upstream")
    assert h != io.hash_obj([1, 2, 3], {"rho": 0.7, "objective": "forget"}, "upstream")  # part order matters
    # pinned: the hash must not depend on the process (e.g. Python's salted hash()) or change silently
    assert io.hash_obj({"a": 1}, "b") == "d08e8ef72872355d"  # sha256(b'{"a": 1}"b"')[:16]


def test_hash_obj_of_config_tracks_changes():
    a = resolve().to_dict()
    b = resolve(flags={"rho": 0.5}).to_dict()
    assert io.hash_obj(a) == io.hash_obj(resolve().to_dict())
    assert io.hash_obj(a) != io.hash_obj(b)


def test_stage_markers(tmp_path):
    stage = tmp_path / "runs" / "score"
    assert not io.stage_done(stage, "k1")
    io.mark_done(stage, "k1", tokens=42)
    assert io.stage_done(stage, "k1")
    assert not io.stage_done(stage, "k2")
    assert io.read_json(stage / io.DONE_MARKER) == {"key": "k1", "tokens": 42}
    io.mark_done(stage, "k2")
    assert io.stage_done(stage, "k2") and not io.stage_done(stage, "k1")


def test_fingerprint_path_changes_with_content(tmp_path):
    f = tmp_path / "data.jsonl"
    f.write_text("a\n", encoding="utf-8")
    first = io.fingerprint_path(f)
    assert io.fingerprint_path(f) == first
    f.write_text("b\n", encoding="utf-8")
    assert io.fingerprint_path(f) != first
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "x").write_text("1", encoding="utf-8")
    before = io.fingerprint_path(folder)
    (folder / "y").write_text("2", encoding="utf-8")
    assert io.fingerprint_path(folder) != before


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"npo_beta": 0.0}, "npo_beta must be a finite number > 0"),
        ({"warmup_ratio": 1.5}, r"warmup_ratio must be in \[0, 1\)"),
        ({"logging_steps": 0}, "logging_steps must be >= 1"),
        ({"lr_scheduler": "cosin"}, "unknown lr_scheduler 'cosin'"),
        ({"negative_mean": "all"}, "negative_mean must be negatives or tokens"),
        ({"neutral": "drop"}, "neutral must be ignore or learn"),
    ],
)
def test_training_values_rejected_before_any_work(flags, message):
    with pytest.raises(ForgetuneError, match=message):
        resolve(flags=flags)


def test_empty_yaml_section_is_allowed(tmp_path):
    cfg = resolve(write_yaml(tmp_path, "train:\n  # batch_size: 4\npartition: {rho: 0.5}\n"))
    assert cfg.train == RunConfig().validate().train and cfg.partition.rho == 0.5


def test_base_layer_sits_below_yaml_and_flags(tmp_path):
    """The demo's settings are a base layer: a YAML file and flags still override them."""
    path = write_yaml(tmp_path, "train: {batch_size: 4}\n")
    cfg = resolve(path, {"epochs": 1.0}, base={"batch_size": 8, "epochs": 2.0, "learning_rate": 1e-4})
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.learning_rate) == (4, 1.0, 1e-4)


def test_reference_data_brings_the_trusted_reference_defaults_unless_set(tmp_path):
    from forgetune.config import TRUSTED_REFERENCE_DEFAULTS

    trusted = TRUSTED_REFERENCE_DEFAULTS["partition"]
    cfg = resolve(flags={"reference_data": "trusted.jsonl"})
    assert (cfg.partition.rank_by, cfg.partition.negative_below) == (trusted["rank_by"], trusted["negative_below"])
    assert resolve().partition.rank_by == "difference"  # without a trusted file: the cross-fit defaults
    # a setting given anywhere wins over the trusted-reference default: a flag, a YAML key, a preset
    cfg = resolve(flags={"reference_data": "trusted.jsonl", "negative_below": -1.0})
    assert (cfg.partition.rank_by, cfg.partition.negative_below) == (trusted["rank_by"], -1.0)
    path = tmp_path / "c.yaml"
    path.write_text("reference: {reference_data: trusted.jsonl}\npartition: {rank_by: difference}\n")
    assert resolve(path).partition.rank_by == "difference"
    paper = resolve(flags={"preset": "paper", "reference_data": "trusted.jsonl"})
    assert (paper.partition.rank_by, paper.partition.negative_below) == ("difference", None)


def test_a_reference_model_is_trusted_like_a_reference_file_and_excludes_it():
    cfg = resolve(flags={"reference_model": "ref-dir"})
    assert (cfg.partition.rank_by, cfg.train.objective) == ("reference", "ignore")
    with pytest.raises(ForgetuneError, match="one of --reference-data and --reference-model"):
        resolve(flags={"reference_model": "ref-dir", "reference_data": "trusted.jsonl"})


def test_the_ranking_in_force_is_said_with_its_reason():
    from forgetune.pipeline import ranking_in_force

    cross_fit = ranking_in_force(resolve())
    assert "CE_base - CE_ref" in cross_fit and "the default without --reference-data" in cross_fit
    trusted = ranking_in_force(resolve(flags={"reference_data": "trusted.jsonl"}))
    assert "-CE_ref" in trusted and "below -2.3" in trusted and "the default with --reference-data" in trusted
    assert "no ranking" in ranking_in_force(resolve(flags={"rank_by": "labels"}))
    assert "whole examples" in ranking_in_force(resolve(flags={"unit": "example", "rank_by": "reference"}))


def test_trl_spellings_reach_the_same_fields_as_flags_and_as_a_flat_yaml(tmp_path):
    """A TRL user's YAML and flags, as they are: transformers' names and underscore spellings map onto the fields."""
    trl = tmp_path / "trl.yaml"
    trl.write_text("model_name_or_path: my/model\ndataset_name: train.jsonl\noutput_dir: out\nnum_train_epochs: 3\n"
                   "per_device_train_batch_size: 4\ngradient_accumulation_steps: 2\nlearning_rate: 1.0e-4\n"
                   "lr_scheduler_type: cosine\nuse_peft: true\nlora_r: 8\n")
    cfg = resolve(trl)
    assert (cfg.model.model, cfg.data.data, cfg.output) == ("my/model", "train.jsonl", "out")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.grad_accum) == (3.0, 4, 2)
    assert (cfg.train.learning_rate, cfg.train.lr_scheduler) == (1e-4, "cosine")
    assert (cfg.model.lora, cfg.model.lora_r) == (True, 8)
    sectioned = tmp_path / "sectioned.yaml"
    sectioned.write_text("train:\n  num_train_epochs: 5\n  max-steps: 7\n")
    assert (resolve(sectioned).train.epochs, resolve(sectioned).train.max_steps) == (5.0, 7)


def test_trl_flag_spellings_parse_onto_the_fields():
    from forgetune.cli import build_parser

    argv = ["run", "--model_name_or_path", "m", "--dataset_name", "d.jsonl", "--output_dir", "o",
            "--num_train_epochs", "3", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
            "--learning_rate", "1e-4", "--lr_scheduler_type", "cosine", "--max_steps", "5", "--use_peft"]
    args = vars(build_parser(argv).parse_args(argv))
    assert {k: args[k] for k in ("model", "data", "output", "epochs", "batch_size", "grad_accum", "learning_rate",
                                 "lr_scheduler", "max_steps", "lora")} == {
        "model": "m", "data": "d.jsonl", "output": "o", "epochs": 3.0, "batch_size": 4, "grad_accum": 2,
        "learning_rate": 1e-4, "lr_scheduler": "cosine", "max_steps": 5, "lora": True}


def test_dtype_auto_is_the_default_and_float32_on_a_cpu():
    import torch

    from forgetune.models import torch_dtype

    assert resolve().model.dtype == "auto"
    if not torch.cuda.is_available():
        assert torch_dtype("auto") == torch.float32
    assert torch_dtype("bfloat16") == torch.bfloat16


def test_load_best_model_at_end_needs_eval_data():
    with pytest.raises(ForgetuneError, match="load_best_model_at_end needs eval_data"):
        resolve(flags={"load_best_model_at_end": True})
    with pytest.raises(ForgetuneError, match="eval_steps must be >= 0 and save_total_limit >= 1"):
        resolve(flags={"save_total_limit": 0})


# ---------------------------------------------------------------- settings each loss declares


@pytest.fixture
def new_objective():
    """An objective added the way a contributor adds one: a registered class declaring its Settings (removed after)."""
    from dataclasses import dataclass

    from forgetune import objectives
    from forgetune.objectives.base import Objective
    from forgetune.settings import Settings, at_least, option

    @dataclass
    class HalfSettings(Settings):
        half_weight: float = option(0.5, "Weight of the negatives' CE.")

        def validate(self):
            at_least("half_weight", self.half_weight)

    @objectives.register("test-half")
    class Half(Objective):
        Settings = HalfSettings
        needs_partition = True

        def __call__(self, ce, tokens, progress):
            return (ce * (tokens.polarity == 1) + self.half_weight * ce * (tokens.polarity == -1)).sum(), {}

    yield Half
    objectives.REGISTRY.pop("test-half")


def test_a_new_objectives_declared_setting_is_a_flag_a_yaml_key_checked_and_saved(new_objective, tmp_path):
    from forgetune import objectives

    info = field_index()["half_weight"]
    assert (info.section, info.type, info.default) == ("train", float, 0.5)
    assert info.help == "[test-half] Weight of the negatives' CE."
    cfg = resolve(flags={"objective": "test-half", "half_weight": "0.25"})
    assert cfg.train.objective_args == {"half_weight": 0.25}
    assert objectives.build(cfg.train.objective, cfg.train.objective_args).half_weight == 0.25
    from_yaml = resolve(write_yaml(tmp_path, "train:\n  objective: test-half\n"))
    assert from_yaml.train.objective_args == {"half_weight": 0.5}
    with pytest.raises(ForgetuneError, match="half_weight must be a finite number >= 0, got -1.0"):
        resolve(flags={"objective": "test-half", "half_weight": -1.0})
    saved = dump_yaml(cfg)
    assert "  objective: test-half\n  half_weight: 0.25\n" in saved  # right after the objective's name
    assert from_dict(load_yaml(write_yaml(tmp_path, saved, "saved.yaml"))) == cfg


def test_a_setting_the_chosen_loss_does_not_take_is_refused_if_yours_and_dropped_if_a_presets():
    with pytest.raises(ForgetuneError, match=r"--npo-beta does not apply to objective ignore \(its settings: none\); "
                                             r"it is a setting of forget-constrained, forget-npo"):
        resolve(flags={"objective": "ignore", "npo_beta": 0.2})
    cfg = resolve(flags={"preset": "paper", "objective": "ignore"})  # the preset's lambda settings were for forget
    assert cfg.train.objective_args == {}
    trusted = resolve(flags={"reference_data": "trusted.jsonl"})  # its defaults choose ignore
    assert (trusted.train.objective, trusted.train.objective_args) == ("ignore", {})
    with pytest.raises(ForgetuneError, match="--alpha does not apply to unlearning method npo"):
        resolve(flags={"method": "npo", "alpha": 1e-3})


def test_every_registered_losss_settings_are_flags_of_its_section_naming_it():
    import dataclasses
    import re

    from forgetune import objectives, unlearning

    index = field_index()
    for section, registry in (("train", objectives), ("unlearn", unlearning)):
        for name in registry.names():
            for f in dataclasses.fields(registry.get(name).Settings):
                readers = re.findall(r"\[([^\]]*)\]", index[f.name].help)
                assert index[f.name].section == section and any(name in r.split(", ") for r in readers), f.name


def test_a_config_saved_by_an_earlier_version_with_every_losss_settings_still_loads():
    """Before each loss declared its settings, config.yaml held all of them flat (a run of `ignore` saved npo_beta);
    `forgetune eval/generate/report` must still read such runs."""
    old = {"train": {"objective": "ignore", "lambda_max": 0.25, "npo_beta": 0.1, "constraint_eps": 0.0,
                     "truncation_fraction": 0.1, "learning_rate": 1e-4},
           "unlearn": {"method": "npo", "beta": None, "retain_floor": None, "alpha": None}}
    cfg = from_dict(old)
    assert (cfg.train.objective, cfg.train.objective_args, cfg.train.learning_rate) == ("ignore", {}, 1e-4)
    assert cfg.unlearn.method_args == {"beta": 0.1, "retain_weight": 1.0}
