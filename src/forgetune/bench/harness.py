"""The benchmark harness both benches share (noisy SFT, unlearning): the seeds x methods loop with resume from an
earlier bench's rows, mean and sample std over seeds, paired differences with their 95 % intervals, and the tables
(markdown, CSV, JSON). A benchmark supplies its data, how to run and grade one method, and its outputs."""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from forgetune.errors import ForgetuneError
from forgetune.io import read_json, write_json, write_text
from forgetune.metrics.paired import mean_std, paired_difference

log = logging.getLogger(__name__)

# Options that do not change a (seed, method) result: a bench rerun with other values reuses the finished rows.
_NOT_IN_RESULT = ("seeds", "methods", "results")


def finished_rows(cfg: Any, root: Path) -> list[dict[str, Any]]:
    """Rows of an earlier bench (a dataclass config) in the same folder, so more seeds or methods add to it instead of
    redoing it. An earlier bench with other settings is refused rather than overwritten: its results are not this
    one's."""
    if not (root / "results.json").is_file():
        return []
    earlier = read_json(root / "results.json")
    differ = [f"{k} {earlier['config'].get(k)!r} there, {v!r} now" for k, v in asdict(cfg).items()
              if k not in _NOT_IN_RESULT and earlier["config"].get(k) != v]
    if differ:
        raise ForgetuneError(f"{root / 'results.json'} holds a bench with other settings ({'; '.join(differ)}); "
                             "pass --results DIR for a new one, or remove that folder")
    return earlier["runs"]


# prepare(seed, todo) -> run(method) -> the method's metrics: a seed's data and shared models are made once, and only
# when one of its methods is left to run.
Prepare = Callable[[int, list[str]], Callable[[str], dict[str, Any]]]


def run_grid(cfg: Any, root: Path, methods: list[str], prepare: Prepare,
             write: Callable[[list[dict[str, Any]]], None]) -> list[dict[str, Any]]:
    """Every (seed, method) of `cfg.seeds` x `methods` not in the folder's results.json yet, in order: one row each
    (method, seed, seconds, then the metrics `run` returns, whose own `seconds` win), written by `write` after every
    method so an interrupted bench keeps what it finished and a rerun resumes."""
    rows = finished_rows(cfg, root)
    for seed in range(cfg.seeds):
        done = {r["method"] for r in rows if r["seed"] == seed}
        todo = [m for m in methods if m not in done]
        if not todo:
            log.info("[%s] seed %d: every method already in results.json", cfg.name, seed)
            continue
        run = prepare(seed, todo)
        for method in todo:
            started = time.time()
            log.info("[%s] seed %d: %s", cfg.name, seed, method)
            metrics = run(method)
            rows.append({"method": method, "seed": seed, "seconds": round(time.time() - started, 1), **metrics})
            write(rows)
    return rows


def summarise(rows: list[dict[str, Any]], methods: list[str], metrics: tuple[str, ...],
              baseline: str = "sft") -> list[dict[str, Any]]:
    """Mean and sample std over seeds of each metric, per method (None where a metric does not apply); with per-item
    hits, each method's exact-match difference to `baseline` on the seeds both have, with its paired 95 % interval."""
    table = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        entry: dict[str, Any] = {"method": method, "seeds": len(mine)}
        for metric in metrics:
            values = [r[metric] for r in mine if r.get(metric) is not None]
            entry[metric] = mean_std(values) if values else None
        entry[f"vs_{baseline}"] = versus(rows, method, baseline)
        table.append(entry)
    return table


def versus(rows: list[dict[str, Any]], method: str, baseline: str) -> dict[str, Any] | None:
    """Paired exact-match difference method - baseline over the seeds where both were graded item by item."""
    hits = {(r["method"], r["seed"]): r.get("hits") for r in rows}
    seeds = sorted(seed for (m, seed), h in hits.items() if m == method and h and hits.get((baseline, seed)))
    if method == baseline or not seeds:
        return None
    result = paired_difference([_hit_array(hits[method, s]) for s in seeds],
                               [_hit_array(hits[baseline, s]) for s in seeds])
    return {"seeds": seeds, **result}


def _hit_array(hits: str) -> np.ndarray:
    """"0110..." (one character per test item, as eval.json stores it) -> 0/1 array."""
    return np.frombuffer(hits.encode(), dtype=np.uint8) - ord("0")


def markdown_table(table: list[dict[str, Any]], metrics: tuple[str, ...], baseline: str = "sft") -> str:
    """Mean ± sample std per method, and the paired difference to the baseline in exact-match points with its 95 %
    interval; metrics that no method has on this benchmark are left out."""
    metrics = [m for m in metrics if any(entry[m] is not None for entry in table)]
    paired = any(entry.get(f"vs_{baseline}") for entry in table)
    extra = f" | EM − {baseline} (points) [95 % CI] |" if paired else " |"
    header = "| method | seeds | " + " | ".join(metrics) + extra
    lines = [header, "|" + "---|" * (len(metrics) + 2 + paired)]
    for entry in table:
        cells = [f"{entry[m][0]:.3f} ± {entry[m][1]:.3f}" if entry[m] is not None else "—" for m in metrics]
        if paired:
            diff = entry.get(f"vs_{baseline}")
            cells.append(f"{100 * diff['mean']:+.1f} [{100 * diff['ci95'][0]:+.1f}, {100 * diff['ci95'][1]:+.1f}]"
                         if diff else "—")
        lines.append(f"| {entry['method']} | {entry['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(cfg: Any, root: Path, rows: list[dict[str, Any]], methods: list[str],
                 metrics: tuple[str, ...]) -> list[dict[str, Any]]:
    """results.csv (a row per method and seed), results.json (config, rows, summary), results.md (mean ± std).
    The tables hold every method with rows, in the order of `methods` first: a bench run for a few methods adds
    them to the folder's tables instead of hiding the earlier ones."""
    table = summarise(rows, list(dict.fromkeys([*methods, *(r["method"] for r in rows)])), metrics)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(["method", "seed", "seconds", *metrics])),
                            restval="", extrasaction="ignore")  # per-item hits stay in results.json
    writer.writeheader()
    writer.writerows(rows)
    write_text(root / "results.csv", buffer.getvalue())
    write_json(root / "results.json", {"config": asdict(cfg), "runs": rows, "summary": table})
    write_text(root / "results.md", f"# {cfg.name}\n\n" + markdown_table(table, metrics))
    return table


