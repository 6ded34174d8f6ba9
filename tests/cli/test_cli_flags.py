"""The CLI's flags and printed numbers, without a model: no prefix matching, per-stage help, a fast top-level help,
rounded output, --extract auto, and the packaging fixes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from forgetune.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("argv", "expected"), [
    (["run", "--max-step", "5", "--data", "x"], "run: unrecognized argument --max-step; did you mean --max-steps?"),
    (["partition", "--rh=0.5"], "partition: unrecognized argument --rh; did you mean --rho?"),
    (["eval", "model", "--extrct", "exact"], "eval: unrecognized argument --extrct; did you mean --extract?"),
])
def test_a_flag_prefix_is_an_unknown_flag_with_the_closest_one_suggested(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"forgetune: error: {expected}"), err


def _help(*argv: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_each_stage_help_lists_only_the_sections_it_reads(capsys):
    score = _help("score", capsys=capsys)
    assert "--score-batch-size" in score and "--max-length" in score
    assert "train options" not in score and "--learning-rate" not in score and "--rho" not in score
    train = _help("train", capsys=capsys)
    assert "--learning-rate" in train and "--score-batch-size" not in train and "--cross-fit" not in train
    everything = _help("run", capsys=capsys)
    for flag in ("--learning-rate", "--score-batch-size", "--rho", "--cross-fit", "--num-prompts"):
        assert flag in everything
    # unlisted is not refused: the upstream stages' settings enter a stage's cache key
    parsed = build_parser(["score"]).parse_args(["score", "--learning-rate", "1e-3", "--max-steps", "2"])
    assert parsed.learning_rate == 1e-3 and parsed.max_steps == 2


def test_top_level_help_imports_neither_torch_nor_transformers():
    code = ("import sys\nfrom forgetune.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('heavy:', sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "eval" in result.stdout and "heavy: []" in result.stdout


def test_stage_records_and_trainer_logs_print_rounded_numbers():
    from forgetune.pipeline import format_info
    from forgetune.trainer import format_logs

    info = {"key": "abc", "tokens": 189, "mean_score": 0.012754079885780811, "mode": "cross_fit=2"}
    assert format_info(info) == "tokens=189, mean_score=0.01275, mode=cross_fit=2"
    logs = {"loss": 6.0089712142944336, "learning_rate": 1.6666666666666667e-05, "tokens_pos": 142.0,
            "epoch": 1.6666666666666667, "total_flos": 7.2e7, "step": 5}
    assert format_logs(logs) == "step 5: loss 6.009, learning_rate 1.667e-05, tokens_pos 142, epoch 1.667"


@pytest.mark.parametrize(("references", "mode"), [
    (["The answer is 85.", "The answer is 1,204."], "last-number"),
    (["She has 7 pens.\n#### 7", "#### 12"], "after-####"),
    (["cold", "The opposite of up is down."], "first-line"),
    (["cold", "It happened in 1947."], "first-line"),  # one text answer is enough: numbers would grade it wrong
])
def test_extract_auto_chooses_from_the_reference_answers(references, mode):
    from forgetune.evaluate import choose_extract

    assert choose_extract(references)[0] == mode


def test_packaging_license_is_an_spdx_string_and_make_test_reports_skips():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^license = "Apache-2.0"', pyproject, re.M)  # a table: setuptools warns 3 times per install
    recipe = (REPO / "Makefile").read_text().split("\ntest: install\n", 1)[1].splitlines()[0]
    assert "pytest" in recipe and "-q" in recipe.split() and "-rs" in recipe.split()


def test_library_warnings_are_hidden_by_default_and_shown_once_with_verbose():
    import logging
    import warnings

    from forgetune.cli import setup_logging

    with warnings.catch_warnings(record=True) as seen:
        setup_logging(quiet=False)
        warnings.warn("a library's deprecation", FutureWarning, stacklevel=1)
        assert logging.getLogger("transformers").level == logging.ERROR and not seen
        setup_logging(quiet=False, verbose=True)
        for _ in range(3):
            warnings.warn("a library's deprecation", FutureWarning, stacklevel=1)
        assert logging.getLogger("datasets").level == logging.WARNING
        assert [str(w.message) for w in seen] == ["a library's deprecation"]  # once, not three times
    setup_logging(quiet=False)
