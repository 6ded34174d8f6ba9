"""`forgetune <stage>`: one subcommand per stage; every config field is a flag; errors are one line, exit 2."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import logging
import os
import sys
import typing
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from forgetune.config import ALIASES, SECTIONS, UNLEARN_DEFAULTS, field_index, load_yaml, resolve
from forgetune.errors import ForgetuneError

COMMANDS: dict[str, str] = {
    "run": "all stages the objective needs, skipping those whose inputs and config are unchanged",
    "reference": "train the reference model(s) by plain SFT",
    "score": "per-token CE of base and reference; score = CE_base - CE_ref",
    "partition": "rank tokens globally into positives / negatives (/ ignored)",
    "train": "fine-tune from the base with the chosen objective",
    "generate": "answer prompts with a trained run",
    "demo": "the whole pipeline on the embedded model and a shipped noisy arithmetic set",
    "unlearn": "remove a forget set from a model while keeping its utility on a retain set (ga, npo, constrained, ...)",
}
BENCH_HELP = "compare methods x seeds on a benchmark with ground-truth noise (tables, JSON, CSV, plots)"
EVAL_HELP = "evaluate a run or model: exact match, perplexity, diversity, memorised noise, noise detection"
REPORT_HELP = "one self-contained HTML page of a run: config, timings, losses, score histogram, token heat map"
# Subcommands whose flags are a dataclass: (help, module, class, positional). Their modules import torch, so only the
# invoked one is loaded.
DATACLASS_COMMANDS: dict[str, tuple[str, str, str, str | None]] = {
    "eval": (EVAL_HELP, "forgetune.evaluate", "EvalConfig", "RUN_OR_MODEL"),
    "bench": (BENCH_HELP, "forgetune.bench.noisy", "BenchConfig", "NAME"),
    "report": (REPORT_HELP, "forgetune.report", "ReportConfig", "RUN_DIR"),
}
# The config sections each stage reads, the only ones its --help lists (run and demo list all). The others are still
# accepted: the settings the upstream stages ran with enter this stage's cache key.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "reference": ("model", "data", "reference", "train"),
    "score": ("model", "data", "reference", "score"),
    "partition": ("model", "data", "partition"),
    "train": ("model", "data", "train"),
    "generate": ("model", "data", "generate"),
    "unlearn": ("model", "data", "train", "unlearn"),
}
# run and demo list every section but unlearn's (only `forgetune unlearn` reads it).
PIPELINE_SECTIONS = tuple(s for s in SECTIONS if s != "unlearn")
STAGE_EPILOG = ("Flags of the other sections (forgetune run --help) are accepted too: pass the ones the run was made "
                "with, since the upstream stages' settings are part of this stage's cache key.")
UNLEARN_EPILOG = ("Writes a run directory (config.yaml, model/, unlearn/, summary.json) that forgetune eval, generate "
                  "and report read. Unlearning's own train defaults, under YAML and flags: "
                  + ", ".join(f"{k} {v}" for k, v in UNLEARN_DEFAULTS["train"].items()) + ".")
GENERATE_EPILOG = ("Reads RUN/config.yaml (the run's model, data and settings) and never rewrites it; flags override "
                   "it for this command only.")


def _optional(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def add_flag(group, name: str, kind: type, default: Any, help_text: str, shown: bool = True,
             aliases: Sequence[str] = ()) -> None:
    """`--field-name` for a dataclass field, also spelt `--field_name` and as each alias (transformers' / TRL's name);
    unset flags are left out so lower layers (YAML, defaults) apply. `shown=False`: accepted but left out of --help."""
    flags = list(dict.fromkeys(f"--{spelling}" for n in (name, *aliases) for spelling in (n.replace("_", "-"), n)))
    help_text = f"{help_text} (default: {default})" if shown else argparse.SUPPRESS
    if kind is bool:
        group.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=help_text)
    else:
        group.add_argument(*flags, dest=name, type=_optional(kind), default=argparse.SUPPRESS,
                           metavar=kind.__name__.upper(), help=help_text)


def add_config_flags(parser: argparse.ArgumentParser, shown: Sequence[str] = tuple(SECTIONS)) -> None:
    """One flag per config field (`--field-name`), grouped by section, defaults left to the dataclasses; --help lists
    the sections in `shown` (a section whose flags are all hidden gets no heading)."""
    parser.add_argument("--config", metavar="FILE", help="YAML config (sections as in forgetune.config)")
    add_quiet(parser)
    groups = {name: parser.add_argument_group(f"{name} options") for name in SECTIONS}
    for name, info in field_index().items():
        add_flag(parser if info.section is None else groups[info.section], name, info.type, info.default, info.help,
                 shown=info.section is None or info.section in shown,
                 aliases=[alias for alias, field in ALIASES.items() if field == name])


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors; no progress bars")
    parser.add_argument("--verbose", action="store_true",
                        help="also the libraries' warnings (transformers, datasets, peft, torch), each once")


def add_dataclass_parser(sub, command: str, cls: type, help_text: str, positional: str | None) -> None:
    """A subcommand whose dataclass fields are flags, the first one positional when `positional` names it."""
    parser = sub.add_parser(command, help=help_text, description=help_text)
    fields = dataclasses.fields(cls)
    if positional:
        parser.add_argument(fields[0].name, metavar=positional, help=fields[0].metadata["help"])
    add_quiet(parser)
    hints = typing.get_type_hints(cls)
    for f in fields[1 if positional else 0:]:
        kind = next((a for a in typing.get_args(hints[f.name]) if a is not type(None)), hints[f.name])
        add_flag(parser, f.name, kind, f.default, f.metadata["help"])


class OneLineParser(argparse.ArgumentParser):
    """Bad flags get one line and exit 2, like every other bad input (argparse would print its usage block first).
    No prefix matching: `--max-step 5` is an unknown flag with a suggestion, not a silent `--max-steps 5`."""

    stages: Any = None  # the subcommands' action, on the top-level parser

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("forgetune").strip()
        self.exit(2, f"forgetune: error: {where + ': ' if where else ''}{message} (see {self.prog} --help)\n")

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            stage = self.stages.choices[parsed.command] if self.stages else self
            stage.error(unknown_message(stage, unknown))
        return parsed


def unknown_message(parser: argparse.ArgumentParser, unknown: list[str]) -> str:
    """The first unknown flag, with the closest known one of its subcommand."""
    flag = next((a.split("=", 1)[0] for a in unknown if a.startswith("-")), None)
    if flag is None:
        return f"unrecognized arguments: {' '.join(unknown)}"
    known = [s for action in parser._actions for s in action.option_strings]
    close = difflib.get_close_matches(flag, known, n=1)
    return f"unrecognized argument {flag}" + (f"; did you mean {close[0]}?" if close else "")


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """`argv`: only the invoked command gets its flags (the config's include every registered loss's settings, and
    the losses import torch), so `forgetune --help` imports no torch; `bench unlearn` takes the unlearning
    benchmark's own flags."""
    parser = OneLineParser(
        prog="forgetune",
        description="Token-level forgetting for LLM fine-tuning: learn the useful tokens, forget the misleading ones.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    parser.stages = sub
    invoked = next((a for a in argv if not a.startswith("-")), None)
    for name, help_text in COMMANDS.items():
        if name != invoked:
            sub.add_parser(name, help=help_text)
            continue
        epilog = {"generate": GENERATE_EPILOG, "unlearn": UNLEARN_EPILOG}.get(
            name, STAGE_EPILOG if name in STAGE_SECTIONS else None)
        add_config_flags(sub.add_parser(name, help=help_text, description=help_text, epilog=epilog),
                         STAGE_SECTIONS.get(name, PIPELINE_SECTIONS))
    for name, (help_text, module, class_name, positional) in DATACLASS_COMMANDS.items():
        if name != invoked:
            sub.add_parser(name, help=help_text)
            continue
        if list(argv[:2]) == ["bench", "unlearn"]:
            module, class_name = "forgetune.bench.unlearning", "UnlearnBenchConfig"
        cls = getattr(importlib.import_module(module), class_name)
        add_dataclass_parser(sub, name, cls, help_text, positional)
    return parser


def setup_logging(quiet: bool, verbose: bool = False) -> None:
    """forgetune's own lines (one per event); the libraries' warnings only with --verbose, each once (by default
    they repeat advice a forgetune user cannot act on: deprecations inside transformers, padding hints, ...)."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", force=True)
    for noisy in ("transformers", "accelerate", "datasets", "peft", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)
    warnings.filterwarnings("once" if verbose else "ignore")
    from transformers.utils import logging as hf_logging

    if verbose:
        hf_logging.set_verbosity_warning()
    else:
        hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # weight loading/saving bars; forgetune's own stages keep theirs


def execute(command: str, cfg) -> None:
    from forgetune import pipeline
    from forgetune.rundir import format_info

    run = pipeline.open_run(cfg, save_config=command != "generate")
    if command == "demo":
        from forgetune.demo import run_demo

        run_demo(run)
    elif command == "run":
        summary = pipeline.run_all(run)
        pipeline.print_summary(summary, run.dir)
    elif command == "generate":
        for row in pipeline.generate(run):
            print(f"Q: {row['prompt']}")
            if "base" in row:
                print(f"  base:    {row['base']}")
            print(f"  trained: {row['answer']}")
    else:
        info = getattr(pipeline, command)(run)
        print(f"{command}: {format_info(info)}")


# The CLI (not the library: importing it changes nothing in the caller's process) runs offline unless the user says
# otherwise: every path it takes is local. Set before any Hugging Face library is imported; they read these once.
OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def main(argv: Sequence[str] | None = None) -> int:
    for flag in OFFLINE_FLAGS:
        os.environ.setdefault(flag, "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = vars(build_parser(argv).parse_args(argv))
    command, yaml_path, quiet = args.pop("command"), args.pop("config", None), args.pop("quiet")
    setup_logging(quiet, args.pop("verbose"))
    try:
        if command == "eval":
            from forgetune.evaluate import EvalConfig, evaluate, print_results

            print_results(evaluate(EvalConfig(**args)))
            return 0
        if command == "bench" and args["name"] == "unlearn":
            from forgetune.bench.unlearning import UnlearnBenchConfig, run_unlearn_bench

            cfg = UnlearnBenchConfig(**args)
            run_unlearn_bench(cfg)
            print((Path(cfg.results) / cfg.name / "results.md").read_text())
            return 0
        if command == "bench":
            from forgetune.bench.noisy import BenchConfig, run_bench

            cfg = BenchConfig(**args)
            run_bench(cfg)
            print((Path(cfg.results) / cfg.name / "results.md").read_text())
            return 0
        if command == "report":
            from forgetune.report import ReportConfig, write_report

            print(write_report(ReportConfig(**args)))
            return 0
        base = None
        if command == "demo":
            from forgetune.demo import demo_flags

            base = demo_flags()
        elif command == "generate" and args.get("output"):
            if not Path(args["output"]).is_dir() and not args.get("data"):  # with --data: "no trained model" says it
                raise ForgetuneError(f"{args['output']}: no such run directory; pass --output RUN, a folder made by "
                                     "forgetune run or unlearn")
            from forgetune.rundir import RunDir

            if RunDir(args["output"]).config.is_file():
                base = load_yaml(RunDir(args["output"]).config)  # the run's own model, data and prompts
        elif command == "unlearn":
            base = UNLEARN_DEFAULTS
        cfg = resolve(yaml_path, args, base)
        if command == "unlearn":
            from forgetune.rundir import format_info
            from forgetune.unlearn import run_unlearn

            info = run_unlearn(cfg)
            print(f"unlearn: {Path(cfg.output) / 'model'}: {format_info(info)}")
            return 0
        from forgetune.processes import process_state

        if process_state().num_processes > 1 and command not in ("run", "reference", "score", "partition", "train"):
            raise ForgetuneError(
                f"`forgetune {command}` runs in one process; under `accelerate launch` with several processes use "
                "run, reference, score, partition or train"
            )
        execute(command, cfg)
    except ForgetuneError as e:
        print(f"forgetune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("forgetune: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
