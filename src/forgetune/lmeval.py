"""lm-evaluation-harness on a local model (the optional `lmeval` extra): standard benchmarks beside forgetune's own.

Everything stays offline: the model is a local directory and a task made by `write_multiple_choice_task` reads a
local JSONL file. Built-in harness tasks work offline only when their dataset is already in the Hugging Face cache.
The model is the harness's `hf` model with each log-likelihood context run once for all its continuations
(`forgetune.integrations.lm_eval.SharedContextLM`: a multiple-choice question's context once, not once per choice).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from forgetune.errors import ForgetuneError
from forgetune.io import read_json, write_text

INSTALL_HINT = "lm-evaluation-harness is not installed: pip install 'forgetune[lmeval]'"


def write_multiple_choice_task(task_dir: Path, name: str, data_file: Path) -> str:
    """Write TASK_DIR/NAME.yaml, a multiple-choice task over a local JSONL of {question, choices, label} records.

    The harness scores each choice by the log-likelihood of " " + choice after "Q: question\\nA:" (acc: highest sum;
    acc_norm: highest per character). The data path is made absolute so the task works from any directory. Returns
    the task name; pass TASK_DIR as `include_path`.
    """
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(Path(data_file).resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "Q: {{question}}\nA:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "label",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")],
    }
    write_text(Path(task_dir) / f"{name}.yaml", yaml.safe_dump(config, sort_keys=False))
    return name


def _task_manager(tasks: list[str], include_path: Path | None):
    """A TaskManager that knows every task, or a one-line error naming the unknown ones.

    Indexing the built-in tasks parses some 15,000 YAML files (about 10 s), so the include folder alone is tried
    first; it is enough when every name is a plain task there (a group there may list built-in tasks).
    """
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not include_path.is_dir():
            raise ForgetuneError(f"{include_path}: lm-eval include folder not found")
        manager = TaskManager(include_path=str(include_path), include_defaults=False)
        if set(tasks) <= set(manager.all_subtasks):
            return manager
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f"built in or in {include_path}" if include_path else "built in (add --lm-eval-include DIR)"
        raise ForgetuneError(f"unknown lm-eval task(s) {', '.join(unknown)}: none is {where}")
    return manager


def _model_args(model_dir: Path, on_cpu: bool) -> dict[str, Any]:
    """The harness's `hf` model arguments; a PEFT adapter directory is loaded on its (local) base model."""
    args: dict[str, Any] = {"pretrained": str(model_dir), "dtype": "float32" if on_cpu else "auto"}
    if (model_dir / "adapter_config.json").is_file():
        base = read_json(model_dir / "adapter_config.json").get("base_model_name_or_path")
        if not base or not Path(base).is_dir():
            raise ForgetuneError(
                f"{model_dir}: the adapter's base model {base!r} is not a local directory; lm-eval needs it to load "
                "the adapter (save with --merge-lora, or fix base_model_name_or_path in adapter_config.json)"
            )
        has_tokenizer = (model_dir / "tokenizer_config.json").is_file()
        args.update(pretrained=base, peft=str(model_dir), tokenizer=str(model_dir if has_tokenizer else base))
    return args


def run_lm_eval(model_dir: Path, tasks: list[str], include_path: Path | None = None, batch_size: int = 8,
                limit: int | None = None) -> dict[str, dict[str, float]]:
    """Run lm-eval tasks on a local model: {task: {metric: value}}, e.g. {"mc": {"acc": 0.5, "acc_stderr": 0.2}}.

    The harness names metrics "acc,none" (metric, filter); the ",none" of unfiltered metrics is dropped, other
    filters are kept ("exact_match,strict-match"). Non-numeric entries (aliases, "N/A" stderrs) are left out.
    """
    # Never reach the Hub. The libraries read these variables once, at import, and forgetune has usually imported
    # them already (datasets then still sends a download-count request for the local "json" loader), so their
    # flags are set as well.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        import lm_eval
    except ImportError:
        raise ForgetuneError(INSTALL_HINT) from None
    import datasets.config
    import huggingface_hub.constants
    import torch

    huggingface_hub.constants.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True

    manager = _task_manager(tasks, Path(include_path) if include_path is not None else None)
    on_cpu = not torch.cuda.is_available()
    from forgetune.integrations.lm_eval import SharedContextLM

    model = SharedContextLM(**_model_args(Path(model_dir), on_cpu), device="cpu" if on_cpu else "cuda",
                            batch_size=batch_size)
    output = lm_eval.simple_evaluate(model=model, tasks=tasks, task_manager=manager, limit=limit, log_samples=False)
    return {
        task: {key.removesuffix(",none"): float(value) for key, value in metrics.items() if isinstance(value, float)}
        for task, metrics in output["results"].items()
    }
