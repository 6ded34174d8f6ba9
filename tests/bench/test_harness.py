"""The seeds x methods loop both benchmarks run on: order, resume from results.json, one write per method."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from forgetune import ForgetuneError
from forgetune.bench.harness import run_grid, write_tables


@dataclass
class Cfg:
    name: str = "toy"
    seeds: int = 2
    methods: str = ""
    results: str = ""
    lr: float = 0.1


def test_grid_runs_each_seed_and_method_once_and_resumes_from_results_json(tmp_path):
    calls, writes = [], []

    def prepare(seed, todo):
        calls.append(("prepare", seed, tuple(todo)))
        return lambda method: calls.append(("run", seed, method)) or {"exact_match": seed + len(method) / 10}

    def write(rows):
        writes.append(len(rows))
        write_tables(Cfg(), tmp_path, rows, ["a", "bb"], ("exact_match",))

    rows = run_grid(Cfg(), tmp_path, ["a", "bb"], prepare, write)
    assert calls == [("prepare", 0, ("a", "bb")), ("run", 0, "a"), ("run", 0, "bb"),
                     ("prepare", 1, ("a", "bb")), ("run", 1, "a"), ("run", 1, "bb")]
    assert writes == [1, 2, 3, 4]  # after every method: an interrupted bench keeps what it finished
    assert [(r["method"], r["seed"], r["exact_match"]) for r in rows] == [("a", 0, 0.1), ("bb", 0, 0.2),
                                                                         ("a", 1, 1.1), ("bb", 1, 1.2)]
    assert all(r["seconds"] >= 0 for r in rows)

    calls.clear()
    more = run_grid(Cfg(seeds=3), tmp_path, ["a", "bb", "c"], prepare, write)
    # seeds 0-1 only run the new method; seed 2 everything; finished rows are kept as they were
    assert calls == [("prepare", 0, ("c",)), ("run", 0, "c"), ("prepare", 1, ("c",)), ("run", 1, "c"),
                     ("prepare", 2, ("a", "bb", "c")), ("run", 2, "a"), ("run", 2, "bb"), ("run", 2, "c")]
    assert more[:4] == rows and len(more) == 9


def test_a_methods_own_seconds_win_and_other_settings_are_refused(tmp_path):
    rows = run_grid(Cfg(seeds=1), tmp_path, ["a"], lambda seed, todo: lambda m: {"seconds": None},
                    lambda rows: write_tables(Cfg(seeds=1), tmp_path, rows, ["a"], ("seconds",)))
    assert rows == [{"method": "a", "seed": 0, "seconds": None}]
    with pytest.raises(ForgetuneError, match="holds a bench with other settings .lr 0.1 there, 0.2 now"):
        run_grid(Cfg(lr=0.2), tmp_path, ["a"], lambda seed, todo: pytest.fail("nothing may run"), print)
