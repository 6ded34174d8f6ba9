"""targets.md of a noisy-SFT bench: whether each target is met, computed from the bench's rows, never typed by hand.

The targets are those of the "where forgetting wins" issue for a bench with a trusted set: forgetune's default (the
`default` row: the library's defaults given `--reference-data`) against the strongest baselines a user could run
instead, with paired 95 % intervals over test items pooled over seeds.
"""

from __future__ import annotations

from typing import Any

DEFAULT = "default"
BASELINES = ("filter", "sft-trusted", "loss-truncation")
MIN_SEEDS, MIN_TEST_ITEMS = 3, 400
GAIN, OFF_SLICE_COST, AUROC, SEED_MINUTES = 0.05, 0.02, 0.9, 30.0


def _points(diff: dict[str, Any]) -> str:
    low, high = diff["ci95"]
    per_seed = ", ".join(f"{100 * d:+.1f}" for d in diff["per_seed"])
    return f"{100 * diff['mean']:+.1f} points [95 % CI {100 * low:+.1f}, {100 * high:+.1f}] (per seed: {per_seed})"


def _mark(met: bool | None) -> str:
    return "n/a" if met is None else "**met**" if met else "missed"


def targets(rows: list[dict[str, Any]], table: list[dict[str, Any]], versus,
            default_methods: tuple[str, ...]) -> list[tuple[str, bool | None, str]]:
    """(target, met or None when it cannot be judged yet, the numbers behind it); `versus(rows, a, b)` gives the
    paired difference a - b; `default_methods`: what the bench runs by default, the time target's scope."""
    entry = {e["method"]: e for e in table}
    default = entry.get(DEFAULT)
    if default is None:
        return [("forgetune's default was run", False, "no `default` row yet")]
    out: list[tuple[str, bool | None, str]] = []
    seeds = default["seeds"]
    items = min((len(r["hits"]) for r in rows if r.get("hits")), default=0)
    out.append((f">= {MIN_SEEDS} seeds and >= {MIN_TEST_ITEMS} test items", seeds >= MIN_SEEDS
                and items >= MIN_TEST_ITEMS, f"{seeds} seed(s), {items} test items"))
    gain = versus(rows, DEFAULT, "sft")
    out.append((f"default >= +{100 * GAIN:.0f} exact-match points over sft, interval above 0",
                None if gain is None else gain["mean"] >= GAIN and gain["ci95"][0] > 0,
                "no sft row" if gain is None else _points(gain)))
    for baseline in BASELINES:
        diff = versus(rows, DEFAULT, baseline)
        out.append((f"default above {baseline} (mean)", None if diff is None else diff["mean"] > 0,
                    f"no {baseline} row" if diff is None else _points(diff)))
    sft_off, default_off = entry.get("sft", {}).get("exact_match_off_slice"), default.get("exact_match_off_slice")
    if sft_off and default_off:
        cost = sft_off[0] - default_off[0]
        ceiling = entry.get("clean-sft", {}).get("exact_match_off_slice")
        out.append((f"off-slice cost <= {100 * OFF_SLICE_COST:.0f} points", cost <= OFF_SLICE_COST,
                    f"sft {sft_off[0]:.3f}, default {default_off[0]:.3f} off the slice: cost {100 * cost:+.1f} points"
                    + (f" (clean-sft, the corrected corpus, {ceiling[0]:.3f})" if ceiling else "")))
    auroc = default.get("token_auroc")
    out.append((f"token AUROC of the default's detector >= {AUROC}", None if auroc is None else auroc[0] >= AUROC,
                "no detection" if auroc is None else f"{auroc[0]:.3f} ± {auroc[1]:.3f}"))
    for forget, ignore in (("default-ref", "default"), ("oracle-forget", "oracle-ignore")):
        diff = versus(rows, forget, ignore)
        if diff is not None:  # a finding, not a target: does the negative term add anything over ignoring?
            out.append((f"{forget} vs {ignore} (the negative term's worth; not a target)", None, _points(diff)))
    seed0 = [r for r in rows if r["seed"] == 0]
    minutes = sum(r["seconds"] for r in seed0 if r["method"] in default_methods) / 60
    ran = sum(r["method"] in default_methods for r in seed0)
    complete = ran == len(default_methods)  # a bench of a few methods says nothing about the default one's time
    out.append((f"one seed of the default methods <= {SEED_MINUTES:.0f} min on this machine",
                minutes <= SEED_MINUTES if complete else None,
                f"seed 0: {minutes:.1f} min for {ran} of the {len(default_methods)} default methods"))
    return out


def targets_markdown(name: str, rows: list[dict[str, Any]], table: list[dict[str, Any]], versus,
                     default_methods: tuple[str, ...]) -> str:
    lines = [f"# {name}: targets", "", "Computed by `forgetune bench` from results.json; rerun the bench (it resumes) "
             "to recompute.", "", "| target | result | numbers |", "|---|---|---|"]
    lines += [f"| {target} | {_mark(met)} | {numbers} |" for target, met, numbers in targets(rows, table, versus,
                                                                                         default_methods)]
    return "\n".join(lines) + "\n"
