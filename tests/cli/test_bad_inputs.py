"""Bad input through the real CLI: one `forgetune: error:` line naming the file, line or field and what to do, exit
code 2, no traceback. Inputs forgetune accepts with a warning are listed too. docs/robustness.md has one row per case
(by id), with the message as it reads.

Most cases call `forgetune.cli.main` in-process (an exception other than ForgetuneError would fail the test); a few
run `python -m forgetune` to show that nothing but the one line reaches stderr of a real process.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from forgetune.cli import main
from tests_helpers import write_jsonl

DOC = Path(__file__).resolve().parents[2] / "docs" / "robustness.md"
FAST = ["--max-steps", "2", "--batch-size", "4", "--logging-steps", "1", "--score-batch-size", "5", "--quiet"]
RUN_FLAGS = ["--cross-fit", "1", "--reference-fraction", "0.5", *FAST]  # the finished run's settings
GOOD = '{"prompt": "What is 2 plus 2?", "completion": "The answer is 4."}'
MORE = '{"prompt": "Name a colour.", "completion": "Blue."}'


@dataclass
class Ctx:
    tmp: Path
    model: Path
    monkeypatch: pytest.MonkeyPatch
    run: Path | None = None  # a copy of a finished run (reference, score, partition, train, model)
    run_data: Path | None = None


@dataclass(frozen=True)
class Case:
    id: str
    what: str
    build: Callable[[Ctx], list]  # writes its files under ctx.tmp, returns the argv
    expect: str | None  # the line after "forgetune: error: "; {tmp} = the test's folder, "…" = any text
    warning: str | None = None  # accepted input (exit 0): a warning line it must print
    check: Callable[[Ctx], None] | None = None  # what must hold afterwards (artefacts intact, ...)
    needs_run: bool = False


def lines_file(ctx: Ctx, name: str, *lines: str | bytes) -> Path:
    path = ctx.tmp / name
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def run_args(ctx: Ctx, data: Path | str, *extra, command: str = "run", model: Path | None = None) -> list:
    return [command, "--model", model or ctx.model, "--data", data, "--output", ctx.tmp / "out", *FAST, *extra]


def bad_line(name: str, line: str | bytes, *extra) -> Callable[[Ctx], list]:
    """A corpus whose line 2 is `line` (line 1 is a good record)."""
    return lambda ctx: run_args(ctx, lines_file(ctx, name, GOOD, line), *extra)


def sft(name: str, *lines: str | bytes, extra: tuple = ()) -> Callable[[Ctx], list]:
    """Accepted-input cases train one SFT step: the whole path from loading to a saved model runs."""
    return lambda ctx: run_args(ctx, lines_file(ctx, name, *lines), "--objective", "sft", "--max-steps", "1", *extra)


def on_run(command: str, *extra) -> Callable[[Ctx], list]:
    return lambda ctx: [command, "--model", ctx.model, "--data", ctx.run_data, "--output", ctx.run, *RUN_FLAGS,
                        *extra]


def yaml_case(text: str | bytes) -> Callable[[Ctx], list]:
    def build(ctx: Ctx) -> list:
        path = ctx.tmp / "cfg.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["run", "--config", path, "--output", ctx.tmp / "out", "--quiet"]

    return build


def config_only_model(ctx: Ctx) -> list:
    (ctx.tmp / "cfgonly").mkdir()
    (ctx.tmp / "cfgonly" / "config.json").write_text("{}")
    return run_args(ctx, lines_file(ctx, "d.jsonl", GOOD), model=ctx.tmp / "cfgonly")


def corrupt_weights(ctx: Ctx) -> list:
    shutil.copytree(ctx.model, ctx.tmp / "badw")
    (ctx.tmp / "badw" / "model.safetensors").write_bytes(b"garbage, not safetensors")
    return run_args(ctx, lines_file(ctx, "d.jsonl", GOOD), "--objective", "sft", model=ctx.tmp / "badw")


def no_chat_template(ctx: Ctx) -> list:
    target = ctx.tmp / "notemplate"
    shutil.copytree(ctx.model, target)
    (target / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((target / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    return run_args(ctx, lines_file(ctx, "d.jsonl", GOOD), "--objective", "sft", "--max-steps", "1", model=target)


def unreadable(ctx: Ctx) -> list:
    """We run as root, where chmod 000 blocks nothing: the read itself is made to fail as it would for a user."""
    path = lines_file(ctx, "locked.jsonl", GOOD)
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    ctx.monkeypatch.setattr(Path, "read_bytes", read_bytes)
    return run_args(ctx, path)


def directory_as_data(ctx: Ctx) -> list:
    (ctx.tmp / "train.jsonl").mkdir()
    return run_args(ctx, ctx.tmp / "train.jsonl")


def output_is_a_file(ctx: Ctx) -> list:
    (ctx.tmp / "out").write_text("not a folder")
    return run_args(ctx, lines_file(ctx, "d.jsonl", GOOD))


def output_under_a_file(ctx: Ctx) -> list:
    (ctx.tmp / "file").write_text("not a folder")
    args = run_args(ctx, lines_file(ctx, "d.jsonl", GOOD))
    args[args.index("--output") + 1] = ctx.tmp / "file" / "run"
    return args


def other_dataset_scores(ctx: Ctx) -> list:
    other = write_jsonl(ctx.tmp / "other.jsonl", [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(24)])
    args = on_run("partition")(ctx)
    args[args.index("--data") + 1] = other
    return args


def stale_ids(ctx: Ctx) -> list:
    """A score folder copied by hand under a valid marker: its ids are another corpus's."""
    ids = ctx.run / "score" / "ids.json"
    ids.write_text(json.dumps([f"x{i}" for i in range(len(json.loads(ids.read_text())))]))
    return on_run("partition", "--rho", "0.5")(ctx)


def nan_scores(ctx: Ctx) -> list:
    scores = np.load(ctx.run / "score" / "scores.npy")
    scores[3] = np.nan
    np.save(ctx.run / "score" / "scores.npy", scores)
    return on_run("partition", "--rho", "0.5")(ctx)


def nan_base_ce(ctx: Ctx) -> list:
    ce = np.load(ctx.run / "score" / "ce_base.npy")
    np.save(ctx.run / "score" / "ce_base.npy", np.full_like(ce, np.nan))
    return on_run("train", "--lambda-max", "0.3")(ctx)  # a train-only change: the upstream stages stay done


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def disk_full_partition(ctx: Ctx) -> list:
    ctx.monkeypatch.setattr(np, "save", enospc)
    return on_run("partition", "--rho", "0.5")(ctx)


def disk_full_model(ctx: Ctx) -> list:
    from transformers import PreTrainedModel

    ctx.monkeypatch.setattr(PreTrainedModel, "save_pretrained", enospc)
    return on_run("train", "--lambda-max", "0.3")(ctx)  # a train-only change: the upstream stages stay done


def same_bytes(relative: str) -> Callable[[Ctx], None]:
    """The previous artefact is intact and no temporary sibling is left behind."""

    def check(ctx: Ctx) -> None:
        original = ctx.run_data.parent / "run" / relative
        assert (ctx.run / relative).read_bytes() == original.read_bytes()
        assert not list((ctx.run / relative).parent.glob(f".{Path(relative).name}.*"))

    return check


def trained(ctx: Ctx) -> None:
    assert (ctx.tmp / "out" / "model" / "config.json").is_file()


HUGE = json.dumps({"prompt": "many words " * 100_000, "completion": "fine"})  # a 1.1 MB line
LONG = json.dumps({"prompt": "q", "completion": "a long answer with a great many words " * 20})
CHAT = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}'

UNKNOWN_OBJECTIVE = ("unknown objective 'magic'; choose one of forget, forget-constrained, forget-npo, "
                     "forget-unlikelihood, ignore, loss-truncation, sft")

CASES = [
    # ---------------------------------------------------------------- the corpus: syntax and encoding
    Case("malformed-json-line", "a JSONL line cut short", bad_line("x.jsonl", '{"prompt": "a", "completion": '),
         "{tmp}/x.jsonl:2: malformed JSON (Expecting value); fix or remove that line"),
    Case("trailing-comma", "a trailing comma inside a record",
         bad_line("x.jsonl", '{"prompt": "a", "completion": "b",}'),
         "{tmp}/x.jsonl:2: malformed JSON (Expecting property name enclosed in double quotes); fix or remove that "
         "line"),
    Case("deep-nesting", "100 000 nested brackets on one line", bad_line("x.jsonl", "[" * 100_000 + "]" * 100_000),
         "{tmp}/x.jsonl:2: malformed JSON (nested too deeply); fix or remove that line"),
    Case("huge-integer", "an id with 5 000 digits", bad_line("x.jsonl", '{"id": ' + "9" * 5000 + "}"),
         "{tmp}/x.jsonl:2: malformed JSON (Exceeds the limit (4300 digits) for integer string conversion: value has "
         "5000 digits); fix or remove that line"),
    Case("non-utf8-bytes", "a Latin-1 byte on line 2", bad_line("x.jsonl", b'{"prompt": "caf\xe9", "completion": "b"}'),
         "{tmp}/x.jsonl:2: not valid UTF-8 text; re-encode the file as UTF-8"),
    Case("lone-surrogate", 'a JSON escape "\\ud800" (half a UTF-16 pair)',
         bad_line("x.jsonl", '{"prompt": "a\\ud800", "completion": "b"}'),
         "{tmp}/x.jsonl:2: field 'prompt' holds an unpaired surrogate escape (like \\ud800), which is not text; "
         "fix that string"),
    Case("malformed-json-file", "a .json corpus with a missing comma",
         lambda ctx: run_args(ctx, lines_file(ctx, "x.json", "[", GOOD + ",", '{"prompt": "a" "completion": "b"}',
                                              "]")),
         "{tmp}/x.json:3: malformed JSON (Expecting ',' delimiter)"),
    Case("json-not-a-list", "a .json corpus that is an object without `data`",
         lambda ctx: run_args(ctx, lines_file(ctx, "x.json", '{"rows": []}')),
         "{tmp}/x.json: a .json corpus must be a list of records (or {\"data\": [...]})"),
    Case("empty-file", "an empty .jsonl file", lambda ctx: run_args(ctx, lines_file(ctx, "x.jsonl")),
         "{tmp}/x.jsonl: no records found"),
    Case("blank-lines-only", "a .jsonl file of blank lines",
         lambda ctx: run_args(ctx, lines_file(ctx, "x.jsonl", "", "  ")),
         "{tmp}/x.jsonl: no records found"),
    Case("empty-json-list", "a .json corpus `[]`", lambda ctx: run_args(ctx, lines_file(ctx, "x.json", "[]")),
         "{tmp}/x.json: no records found"),
    Case("broken-parquet", "a .parquet file that is not Parquet",
         lambda ctx: run_args(ctx, lines_file(ctx, "x.parquet", "not parquet")),
         "{tmp}/x.parquet: cannot read Parquet (…)"),
    Case("unknown-suffix", "a .csv corpus", lambda ctx: run_args(ctx, lines_file(ctx, "x.csv", "prompt,completion")),
         "{tmp}/x.csv: unknown file type '.csv'; use .jsonl, .json, .parquet or a datasets folder"),
    Case("missing-data-file", "--data names no file", lambda ctx: run_args(ctx, ctx.tmp / "nope.jsonl"),
         "{tmp}/nope.jsonl: file not found"),
    Case("directory-as-data", "a directory where a file is expected (--data train.jsonl/)", directory_as_data,
         "{tmp}/train.jsonl: not a datasets.save_to_disk folder (…); pass a .jsonl, .json or .parquet file, or a "
         "folder written by save_to_disk"),
    Case("unreadable-file", "a file that cannot be read (permission denied)", unreadable,
         "{tmp}/locked.jsonl: cannot read the file (Permission denied); check that it is a readable file"),
    # ---------------------------------------------------------------- the corpus: records
    Case("wrong-type", "a prompt that is a number", bad_line("x.jsonl", '{"prompt": 3, "completion": "b"}'),
         "{tmp}/x.jsonl:2: field 'prompt' must be a string, got int"),
    Case("nan-literal", "a prompt `NaN` (JSON extension)", bad_line("x.jsonl", '{"prompt": NaN, "completion": "b"}'),
         "{tmp}/x.jsonl:2: field 'prompt' must be a string, got float"),
    Case("messages-not-a-list", "`messages` is a string", bad_line("x.jsonl", '{"messages": "hi"}'),
         "{tmp}/x.jsonl:2: field 'messages' must be a non-empty list of {role, content} messages"),
    Case("message-without-content", "a chat message without `content`",
         bad_line("x.jsonl", '{"messages": [{"role": "user"}]}'),
         '{tmp}/x.jsonl:2: messages[0] must be {"role": str, "content": str}'),
    Case("missing-field", "a prompt without completion", bad_line("x.jsonl", '{"prompt": "a"}'),
         "{tmp}/x.jsonl:2: missing field 'completion'"),
    Case("null-field", "`completion: null`", bad_line("x.jsonl", '{"prompt": "a", "completion": null}'),
         "{tmp}/x.jsonl:2: missing field 'completion'"),
    Case("record-not-an-object", "a line that is a JSON list", bad_line("x.jsonl", '["a", "b"]'),
         "{tmp}/x.jsonl:2: a record must be a JSON object, got list"),
    Case("unknown-record-format", "a record with none of the formats' fields",
         bad_line("x.jsonl", '{"body": "plain"}'),
         "{tmp}/x.jsonl:2: cannot tell the record format from fields ['body']; expected 'messages', "
         "'prompt'+'completion', 'instruction'+'output', 'question'+'answer', 'conversations' or 'text'"),
    Case("duplicate-id", "two records with id 7 (number and string)",
         lambda ctx: run_args(ctx, lines_file(ctx, "x.jsonl", '{"id": 7, "prompt": "a", "completion": "b"}',
                                              '{"id": "7", "prompt": "c", "completion": "d"}')),
         "{tmp}/x.jsonl:2: duplicate id '7'; ids must be unique"),
    Case("forced-format-mismatch", "--format alpaca on a chat file",
         lambda ctx: run_args(ctx, lines_file(ctx, "x.jsonl", CHAT), "--format", "alpaca"),
         "{tmp}/x.jsonl:1: missing field 'instruction'"),
    Case("unknown-format", "--format openai", lambda ctx: run_args(ctx, lines_file(ctx, "x.jsonl", GOOD),
                                                                    "--format", "openai"),
         "unknown data format 'openai'; choose auto, chat, prompt-completion, alpaca, question-answer, sharegpt, "
         "text"),
    Case("empty-responses-only", "every completion empty or blank",
         lambda ctx: run_args(ctx, lines_file(ctx, "x.jsonl", '{"prompt": "a", "completion": ""}',
                                              '{"prompt": "b", "completion": "   "}')),
         "{tmp}/x.jsonl: no usable example (all 2 responses empty or truncated away at max_length=512); give the "
         "records assistant answers, or raise --max-length"),
    Case("prompt-only-examples", "chat records without an assistant turn",
         lambda ctx: run_args(ctx, lines_file(ctx, "x.jsonl", '{"messages": [{"role": "user", "content": "q"}]}')),
         "{tmp}/x.jsonl: no usable example (all 1 responses empty or truncated away at max_length=512); give the "
         "records assistant answers, or raise --max-length"),
    Case("all-truncated-away", "prompts longer than --max-length 8",
         lambda ctx: run_args(ctx, lines_file(ctx, "x.jsonl", GOOD, MORE), "--max-length", "8"),
         "{tmp}/x.jsonl: no usable example (all 2 responses empty or truncated away at max_length=8); give the "
         "records assistant answers, or raise --max-length"),
    Case("bad-reference-data", "--reference-data with a malformed line",
         lambda ctx: run_args(ctx, lines_file(ctx, "x.jsonl", GOOD, MORE), "--reference-data",
                              lines_file(ctx, "ref.jsonl", GOOD, '{"prompt": ')),
         "{tmp}/ref.jsonl:2: malformed JSON (Expecting value); fix or remove that line"),
    Case("missing-reference-data", "--reference-data names no file",
         lambda ctx: run_args(ctx, lines_file(ctx, "x.jsonl", GOOD), "--reference-data", ctx.tmp / "no.jsonl"),
         "{tmp}/no.jsonl: reference data file not found"),
    # ---------------------------------------------------------------- accepted, with a warning
    Case("utf8-bom", "a file starting with a UTF-8 byte-order mark (Windows editors)",
         sft("x.jsonl", "\ufeff" + GOOD), None, check=trained),
    Case("some-empty-responses", "an empty completion and a prompt-only chat beside a good record",
         sft("x.jsonl", '{"prompt": "a", "completion": ""}', '{"messages": [{"role": "user", "content": "q"}]}',
             GOOD),
         None, warning="skipped 2 example(s) with an empty response (or one truncated away)", check=trained),
    Case("overlong-sequence", "an answer longer than --max-length 32",
         sft("x.jsonl", LONG, GOOD, extra=("--max-length", "32")),
         None, warning="truncated 1 example(s) to max_length=32 tokens", check=trained),
    Case("huge-line", "a 1.1 MB line (one enormous prompt)", sft("x.jsonl", HUGE, GOOD, extra=("--max-length", "64")),
         None, warning="truncated 1 example(s) to max_length=64 tokens", check=trained),
    Case("no-chat-template", "a tokenizer without a chat template", no_chat_template, None,
         warning="{tmp}/notemplate has no chat template; using forgetune's fallback (### Role: headers)",
         check=trained),
    # ---------------------------------------------------------------- the model
    Case("wrong-model-dir", "--model is a folder without config.json",
         lambda ctx: run_args(ctx, lines_file(ctx, "x.jsonl", GOOD), model=ctx.tmp),
         "{tmp}: not a local Hugging Face model directory (no config.json); pass a folder saved with "
         "save_pretrained, a Hub id (org/name), or omit --model for the embedded default"),
    Case("model-without-tokenizer", "a model folder with config.json only", config_only_model,
         "{tmp}/cfgonly: cannot load a tokenizer (…); the model folder needs the tokenizer files that "
         "tokenizer.save_pretrained writes (tokenizer.json, tokenizer_config.json)"),
    Case("corrupt-weights", "model.safetensors that is not safetensors", corrupt_weights,
         "{tmp}/badw: cannot load a causal language model (Error while deserializing header: …)"),
    Case("float16-training", "--dtype float16 for training",
         lambda ctx: run_args(ctx, lines_file(ctx, "x.jsonl", GOOD), "--objective", "sft", "--dtype", "float16"),
         "training in float16 has no loss scaling here: use --dtype bfloat16 or float32"),
    # ---------------------------------------------------------------- flags and values
    Case("rho-out-of-range", "--rho 1.5", bad_line("x.jsonl", MORE, "--rho", "1.5"),
         "rho must be in [0, 1], got 1.5: pass e.g. --rho 0.7"),
    Case("rho-nan", "--rho nan", bad_line("x.jsonl", MORE, "--rho", "nan"),
         "rho must be in [0, 1], got nan: pass e.g. --rho 0.7"),
    Case("lambda-negative", "--lambda-max -1", bad_line("x.jsonl", MORE, "--lambda-max", "-1"),
         "lambda_max must be a finite number >= 0, got -1.0"),
    Case("lambda-min-above-max", "--lambda-min 0.5 --lambda-max 0.25",
         bad_line("x.jsonl", MORE, "--lambda-min", "0.5", "--lambda-max", "0.25"),
         "lambda_min (0.5) must not exceed lambda_max (0.25)"),
    Case("unknown-objective", "--objective magic", bad_line("x.jsonl", MORE, "--objective", "magic"),
         UNKNOWN_OBJECTIVE),
    Case("learning-rate-negative", "--learning-rate -1", bad_line("x.jsonl", MORE, "--learning-rate", "-1"),
         "learning_rate must be a finite number >= 0, got -1.0"),
    Case("learning-rate-nan", "--learning-rate nan", bad_line("x.jsonl", MORE, "--learning-rate", "nan"),
         "learning_rate must be a finite number >= 0, got nan"),
    Case("lora-rank-zero", "--lora --lora-r 0", bad_line("x.jsonl", MORE, "--lora", "--lora-r", "0"),
         "lora_r must be >= 1, got 0"),
    Case("save-steps-negative", "--save-steps -3", bad_line("x.jsonl", MORE, "--save-steps", "-3"),
         "save_steps must be >= 0 (0: no checkpoints), got -3"),
    Case("max-negative-term-zero", "--max-negative-term 0", bad_line("x.jsonl", MORE, "--max-negative-term", "0"),
         "max_negative_term must be > 0 (or none: no bound), got 0.0"),
    Case("cross-fit-too-large", "--cross-fit 5 on 2 examples", bad_line("x.jsonl", MORE, "--cross-fit", "5"),
         "cross_fit=5 needs at least that many examples (have 2); pass a smaller --cross-fit, or --cross-fit 1 for "
         "one reference on a subset"),
    Case("flag-not-a-number", "--rho abc (argparse)", bad_line("x.jsonl", MORE, "--rho", "abc"),
         "run: argument --rho: invalid float value: 'abc' (see forgetune run --help)"),
    # ---------------------------------------------------------------- YAML config
    Case("yaml-unknown-key", "`train: {lr: 0.1}`", yaml_case("train:\n  lr: 0.1\n"),
         "{tmp}/cfg.yaml: unknown field 'lr' in section 'train'"),
    Case("yaml-unknown-top-level-key", "`colour: blue`", yaml_case("colour: blue\n"),
         "{tmp}/cfg.yaml: unknown config field 'colour' (see forgetune run --help)"),
    Case("yaml-wrong-type", "`train: {batch_size: big}`", yaml_case("train:\n  batch_size: big\n"),
         "{tmp}/cfg.yaml: field 'batch_size' must be int, got 'big'"),
    Case("yaml-section-not-a-mapping", "`train: 5`", yaml_case("train: 5\n"),
         "{tmp}/cfg.yaml: section 'train' must be a mapping of field: value, got 5"),
    Case("yaml-syntax", "an unclosed bracket on line 3", yaml_case("partition:\n  rho: 0.5\n  granularity: [global\n"),
         "{tmp}/cfg.yaml:4: invalid YAML (expected ',' or ']', but got '<stream end>')"),
    Case("yaml-non-utf8", "a Latin-1 byte in the YAML file", yaml_case(b"train:\n  objective: caf\xe9\n"),
         "{tmp}/cfg.yaml:2: not valid UTF-8 text; re-encode the file as UTF-8"),
    Case("yaml-unknown-objective", "`train: {objective: magic}`",
         yaml_case("train: {objective: magic}\ndata: {data: x}\n"),
         UNKNOWN_OBJECTIVE),
    Case("yaml-not-a-mapping", "a YAML list", yaml_case("- a\n- b\n"),
         "{tmp}/cfg.yaml: a config file must be a mapping of sections"),
    Case("yaml-missing", "--config names no file",
         lambda ctx: ["run", "--config", ctx.tmp / "nope.yaml", "--output", ctx.tmp / "out"],
         "{tmp}/nope.yaml: config file not found"),
    Case("yaml-is-a-directory", "--config names a folder", lambda ctx: ["run", "--config", ctx.tmp, "--output", "o"],
         "{tmp}: is a directory, not a YAML config file"),
    Case("unknown-preset", "--preset fancy", bad_line("x.jsonl", MORE, "--preset", "fancy"),
         "unknown preset 'fancy': choose one of paper"),
    # ---------------------------------------------------------------- the run directory and its stages
    Case("output-is-a-file", "--output names a file", output_is_a_file,
         "{tmp}/out: exists and is not a directory; pass a new or existing run folder to --output"),
    Case("output-under-a-file", "--output below a file", output_under_a_file,
         "{tmp}/file/run: cannot create the run folder (Not a directory); pass another --output"),
    Case("no-output", "no --output",
         lambda ctx: ["run", "--model", ctx.model, "--data", lines_file(ctx, "x.jsonl", GOOD)],
         "no run directory: pass --output DIR"),
    Case("score-before-reference", "`forgetune score` on a fresh run",
         lambda ctx: run_args(ctx, lines_file(ctx, "x.jsonl", GOOD), command="score"),
         "{tmp}/out/reference: no up-to-date reference model; run `forgetune reference` first"),
    Case("generate-no-run", "`forgetune generate --output` naming no folder",
         lambda ctx: ["generate", "--output", ctx.tmp / "no" / "such" / "run"],
         "{tmp}/no/such/run: no such run directory; pass --output RUN, a folder made by forgetune run or unlearn"),
    Case("non-positive-epochs", "--epochs -1 without --max-steps (it trained 0 steps and exited 0)",
         lambda ctx: ["run", "--model", ctx.model, "--data", lines_file(ctx, "x.jsonl", GOOD), "--output",
                      ctx.tmp / "out", "--epochs", "-1"],
         "epochs must be > 0 (or set max_steps > 0), got -1.0"),
    Case("unlearn-missing-forget", "`forgetune unlearn --forget` naming no file",
         lambda ctx: ["unlearn", "--model", ctx.model, "--forget", ctx.tmp / "absent.jsonl", "--retain",
                      lines_file(ctx, "retain.jsonl", GOOD), "--method", "npo", "--output", ctx.tmp / "out"],
         "{tmp}/absent.jsonl: file not found (--forget)"),
    Case("generate-before-train", "`forgetune generate` on a fresh run",
         lambda ctx: run_args(ctx, lines_file(ctx, "x.jsonl", GOOD), command="generate"),
         "{tmp}/out/model: no trained model; run `forgetune train` first"),
    Case("scores-of-another-dataset", "`partition` of a run scored on other data", other_dataset_scores,
         "{tmp}/run/score: no up-to-date scores; run `forgetune score` first", needs_run=True),
    Case("stale-score-file", "a score folder copied from another corpus (ids differ) under a valid marker", stale_ids,
         "{tmp}/run/score: the scores belong to another dataset or tokenisation (stale cache); delete "
         "{tmp}/run/score and rerun `forgetune score` on this data", needs_run=True),
    Case("nan-scores", "a NaN in score/scores.npy", nan_scores,
         "{tmp}/run/score/scores.npy: 1 NaN score(s): rescore the corpus (delete {tmp}/run/score first: an "
         "up-to-date stage is otherwise skipped)", needs_run=True),
    Case("nan-base-ce", "NaN in score/ce_base.npy (forget-npo reads it): the loss is NaN", nan_base_ce,
         "{tmp}/run/train: training diverged at step 1: the loss is nan; lower --learning-rate, keep "
         "--max-grad-norm on, and check the run's score files; no checkpoint was saved before it", needs_run=True),
    Case("exploding-negative-term", "`forget` with --max-negative-term 0.5 (its -CE term is about -6 at once)",
         on_run("run", "--objective", "forget", "--negative-below", "none", "--max-negative-term", "0.5"),
         "{tmp}/run/train: training diverged at step 1: the negative term reached -…, beyond --max-negative-term "
         "0.5; lower --lambda-max, use a bounded objective (forget-npo, forget-unlikelihood) or raise the bound; no "
         "checkpoint was saved before it", needs_run=True),
    Case("disk-full-artefact", "disk full while writing partition/polarity.npy", disk_full_partition,
         "{tmp}/run/partition/polarity.npy: cannot write it (no space left on device); free disk space or fix the "
         "folder and rerun the same command (finished stages are kept; the previous polarity.npy, if any, is intact)",
         check=same_bytes("partition/polarity.npy"), needs_run=True),
    Case("disk-full-model", "disk full while saving the trained model", disk_full_model,
         "{tmp}/run/model: cannot write it (no space left on device); free disk space or fix the folder and rerun "
         "the same command (finished stages are kept; the previous model, if any, is intact)",
         check=same_bytes("model/model.safetensors"), needs_run=True),
]
BY_ID = {case.id: case for case in CASES}
ARGPARSE = {"flag-not-a-number"}  # rejected while parsing flags: argparse exits (SystemExit 2) instead of returning
IN_A_PROCESS = ["non-utf8-bytes", "deep-nesting", "corrupt-weights", "exploding-negative-term"]


def pattern(expect: str, tmp: Path) -> re.Pattern:
    parts = [re.escape(part.replace("{tmp}", str(tmp))) for part in expect.split("…")]
    return re.compile(".*".join(parts))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path]:
    """One finished run (reference, score, partition, train, model); each case works on its own copy."""
    from forgetune.bench.data.arith import make_arith

    root = tmp_path_factory.mktemp("finished")
    data = write_jsonl(root / "arith.jsonl", make_arith(24, noise=0.25, seed=3))
    assert main([str(a) for a in ["run", "--model", tiny_model_dir, "--data", data, "--output", root / "run",
                                  *RUN_FLAGS]]) == 0
    return root / "run", data


def make_ctx(case: Case, request, tmp_path: Path, model: Path, monkeypatch) -> Ctx:
    ctx = Ctx(tmp_path, model, monkeypatch)
    if case.needs_run:
        run, data = request.getfixturevalue("finished_run")
        ctx.run, ctx.run_data = tmp_path / "run", data
        shutil.copytree(run, ctx.run)
    return ctx


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, request, tmp_path, tiny_model_dir, monkeypatch, capsys):
    ctx = make_ctx(case, request, tmp_path, tiny_model_dir, monkeypatch)
    argv = [str(a) for a in case.build(ctx)]
    capsys.readouterr()
    if case.id in ARGPARSE:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.splitlines() == [f"forgetune: error: {case.expect}"]
        return
    code = main(argv)
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    if case.expect is None:  # accepted
        assert code == 0, err_lines
        assert not any(line.startswith("forgetune: error:") for line in err_lines)
    else:
        assert code == 2
        errors = [line for line in err_lines if line.startswith("forgetune: error: ")]
        assert len(errors) == 1 and err_lines[-1] == errors[0], err_lines
        assert pattern(case.expect, tmp_path).fullmatch(errors[0].removeprefix("forgetune: error: ")), errors[0]
        assert err_lines == errors, f"extra lines before the error: {err_lines}"
    if case.warning:
        assert case.warning.replace("{tmp}", str(tmp_path)) in err_lines, err_lines
    if case.check:
        case.check(ctx)


@pytest.mark.slow
@pytest.mark.parametrize("case_id", IN_A_PROCESS)
def test_a_real_process_prints_one_line_and_no_traceback(case_id, request, tmp_path, tiny_model_dir, monkeypatch):
    case = BY_ID[case_id]
    ctx = make_ctx(case, request, tmp_path, tiny_model_dir, monkeypatch)
    argv = [str(a) for a in case.build(ctx)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "forgetune", *argv], capture_output=True, text=True, cwd=tmp_path,
                            env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("forgetune: error: "), result.stderr
    assert pattern(case.expect, tmp_path).fullmatch(lines[0].removeprefix("forgetune: error: ")), lines[0]


def test_the_doc_lists_every_case():
    """docs/robustness.md has a row per case, by id, so the table and the tests cannot drift apart."""
    rows = re.findall(r"^\| `([a-z0-9-]+)` \|", DOC.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert sorted(rows) == sorted(BY_ID), set(rows) ^ set(BY_ID)
    assert len(rows) >= 30
