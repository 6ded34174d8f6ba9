"""`forgetune report RUN_DIR`: one self-contained HTML page to look at a run instead of reading .npy files.

The page shows the resolved config, the stage timings and token counts, the loss curves, a histogram of what the
partition ranked (the score, or -CE_ref with rank_by reference; clean vs corrupted tokens when the data carries ground
truth) and a token heat map of sample examples in the same values. It needs no network and no other file: CSS is
inline, plots are base64 PNGs, hover data is a `title` attribute (no JavaScript), and a Content-Security-Policy forbids
loading anything, so the page can be mailed or archived alone and token text from the corpus can never fetch or run
anything. A partial run (objective sft, stages not yet run, data moved) gets what
exists and a list of what is missing.
"""

from __future__ import annotations

import base64
import datetime
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup

from forgetune.config import option
from forgetune.errors import ForgetuneError
from forgetune.io import read_json, write_text
from forgetune.rundir import RunDir

log = logging.getLogger(__name__)

# Curves of train/ (or unlearn/) log_history.json, left axis; lambda goes on its own right axis.
LOSS_KEYS = ("loss", "ce", "ce_pos", "ce_neg", "neg_term", "forget_nll", "retain_nll", "eval_loss")
NEG_RGB, POS_RGB = (202, 0, 32), (5, 113, 176)  # ColorBrewer RdBu ends: red = the reference learned it worse
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
# What the partition ranked, per rank_by (pipeline.ranked_values): short name, axis label, heat-map colours.
RANKED = {
    "difference": ("score", "score = CE_base − CE_ref (rank_by difference)",
                   "red: the reference predicts the token worse than the base; blue: better."),
    "reference": ("−CE_ref", "−CE_ref (rank_by reference)",
                  "red: the reference finds the token unlikely (low −CE_ref); blue: likely."),
    "labels": ("label", "label: −1 = differs from the clean answer (rank_by labels)",
               "red: the token differs from the clean answer."),
}


@dataclass
class ReportConfig:
    run_dir: str = option(None, "A forgetune run directory (holding config.yaml).")
    output: str | None = option(None, "Where to write the HTML page; none means RUN_DIR/report.html.")
    examples: int = option(20, "Heat map: show the first N examples of the corpus.")
    most_negative: int = option(10, "Heat map: also show the N other examples holding the most negative tokens.")


def write_report(cfg: ReportConfig) -> Path:
    """Build the page and write it atomically; returns its path."""
    run_dir = Path(cfg.run_dir or "")
    if not cfg.run_dir or not run_dir.is_dir():
        raise ForgetuneError(f"{cfg.run_dir}: no such run directory")
    layout = RunDir(run_dir)
    if not layout.config.is_file():
        raise ForgetuneError(f"{run_dir}: not a forgetune run directory (no config.yaml)")
    if cfg.examples < 0 or cfg.most_negative < 0:
        raise ForgetuneError("--examples and --most-negative must be >= 0")
    path = Path(cfg.output) if cfg.output else layout.report_page
    if path.is_dir():
        raise ForgetuneError(f"{path}: is a directory; --output names the HTML file to write")
    page = render(collect(run_dir, cfg))
    write_text(path, page)
    log.info("report: wrote %s", path)
    return path


def collect(run_dir: Path, cfg: ReportConfig) -> dict[str, Any]:
    """Everything the template shows; each missing piece becomes a line in `missing` instead of an error."""
    from forgetune import pipeline

    ctx: dict[str, Any] = {"run_dir": str(run_dir), "missing": [], "config": "", "summary": None,
                           "loss_png": None, "hist_png": None, "examples": [], "legend": None, "objective": None,
                           "created": datetime.datetime.now().isoformat(timespec="seconds")}
    missing = ctx["missing"]
    layout = RunDir(run_dir)
    ctx["config"] = layout.config.read_text(encoding="utf-8")
    if layout.summary.is_file():
        ctx["summary"] = summary_rows(read_json(layout.summary))
    else:
        missing.append("summary.json: no stage has finished yet")
    history_path = layout.training_log()
    if history_path.is_file():
        ctx["loss_png"] = loss_plot(read_json(history_path))
        if ctx["loss_png"] is None:
            missing.append(f"{history_path}: no logged training step")
    else:
        missing.append(f"{history_path}: no loss curves; run `forgetune train` first")
    try:  # tokens need the corpus and the tokenizer; without them the page keeps config, summary and losses
        run = pipeline.reopen(run_dir)
    except ForgetuneError as e:
        missing.append(f"corpus or tokenizer: {e} (no histogram, no heat map)")
        return ctx
    ctx["objective"] = run.cfg.train.objective
    arrays: dict[str, np.ndarray] = {}
    if not run.layout.scores().is_file() and not run.objective().needs_partition:
        missing.append(f"scores: objective {run.cfg.train.objective} does not score tokens (no histogram, "
                       "no heat map)")
        return ctx
    try:
        for name in ("scores", "ce_base", "ce_ref"):
            arrays[name] = pipeline.load_scores(run, name)
    except ForgetuneError as e:
        missing.append(f"scores: {e} (no histogram, no heat map)")
        return ctx
    try:
        arrays["polarity"] = pipeline.load_polarity(run)
    except ForgetuneError as e:
        missing.append(f"partition: {e} (heat map without negative marks)")
    if any("corrupted" in ex.meta and "clean_completion" in ex.meta for ex in run.examples):
        from forgetune.metrics.detection import corrupted_tokens

        arrays["corrupted"] = corrupted_tokens(run.tokenizer, run.examples)[0]
    else:
        missing.append("ground truth: the data has no meta.corrupted / meta.clean_completion (one histogram)")
    p = run.cfg.partition
    arrays["ranked"] = np.asarray(pipeline.ranked_values(run))
    tau = p.negative_below if "polarity" in arrays and p.rank_by != "labels" else None
    ctx["hist_png"] = histogram_plot(arrays["ranked"], arrays.get("corrupted"), tau, RANKED[p.rank_by][1])
    ctx["examples"], ctx["legend"] = heat_map(run, arrays, cfg.examples, cfg.most_negative)
    return ctx


def colour_centre(values: np.ndarray, rank_by: str, rho: float, tau: float | None) -> float:
    """The ranked value drawn white: tau (negatives lie below it), else where a global split at rho cuts -CE_ref
    (all of it is <= 0), else a score of 0 (the reference neither better nor worse than the base)."""
    if rank_by == "labels":
        return -0.5
    if tau is not None:
        return tau
    if rank_by == "reference" and values.size:
        return float(np.quantile(values, 1 - rho))
    return 0.0


def summary_rows(summary: dict[str, Any]) -> dict[str, Any]:
    """summary.json as table rows: corpus counts, and per stage its seconds and its other numbers."""
    from forgetune.rundir import RECORDED_STAGES as STAGES

    found = summary.get("stages", {})
    stages = [{"name": name, "seconds": found[name].get("seconds"),
               "details": ", ".join(f"{k}={_fmt(v)}" for k, v in found[name].items() if k != "seconds")}
              for name in sorted(found, key=lambda n: STAGES.index(n) if n in STAGES else len(STAGES))]
    return {"data": summary.get("data", {}), "stages": stages}


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _png(fig) -> str:
    """A matplotlib figure as a data URI: the page embeds its images."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_plot(history: list[dict[str, Any]]) -> str | None:
    """Positive and negative terms (and the total) per logged step, lambda on a second axis; None if no step."""
    steps = [h for h in history if "step" in h and any(k in h for k in (*LOSS_KEYS, "lambda"))]
    if not steps:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.5))
    x = [h["step"] for h in steps]
    same_neg = all(h.get("neg_term") == h.get("ce_neg") for h in steps)  # objective forget: the term is the CE
    for key in LOSS_KEYS:
        if any(key in h for h in steps) and not (key == "neg_term" and same_neg):
            label = "ce_neg (= neg_term)" if key == "ce_neg" and same_neg else key
            ax.plot(x, [h.get(key, np.nan) for h in steps], marker="o", markersize=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss / CE")
    handles, labels = ax.get_legend_handles_labels()
    if any("lambda" in h for h in steps):
        lam = ax.twinx()
        lam.plot(x, [h.get("lambda", np.nan) for h in steps], color="grey", linestyle="--", label="lambda")
        lam.set_ylabel("lambda")
        more = lam.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize=8, loc="best")
    ax.set_title("training losses per logged step")
    fig.tight_layout()
    return _png(fig)


def histogram_plot(values: np.ndarray, corrupted: np.ndarray | None, tau: float | None, xlabel: str) -> str:
    """The ranked values (`xlabel` says which) of all tokens, or of clean vs corrupted tokens (densities: the
    groups differ in size) when labels exist."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.5))
    bins = np.histogram_bin_edges(values, bins=int(np.clip(np.sqrt(values.size), 10, 60)))
    if corrupted is None:
        ax.hist(values, bins=bins, color="#4C72B0", label=f"all tokens ({values.size})")
        ax.set_ylabel("tokens")
    else:
        for mask, name in ((~corrupted, "clean"), (corrupted, "corrupted")):
            if mask.any():
                ax.hist(values[mask], bins=bins, alpha=0.6, density=True, label=f"{name} tokens ({mask.sum()})")
        ax.set_ylabel("density")
    if tau is not None:
        ax.axvline(tau, color="black", linestyle=":", label=f"negative_below τ = {tau:g}")
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8)
    ax.set_title("what the partition ranked, per token")
    fig.tight_layout()
    return _png(fig)


def pick_examples(offsets: np.ndarray, polarity: np.ndarray | None, first: int, most_negative: int) -> list[int]:
    """The first examples (what the corpus looks like) plus those with the most negatives (what gets forgotten)."""
    n = len(offsets) - 1
    chosen = list(range(min(first, n)))
    if polarity is not None and most_negative:
        negatives = np.flatnonzero(np.asarray(polarity) == -1)
        counts = np.bincount(np.searchsorted(offsets, negatives, side="right") - 1, minlength=n)
        rest = sorted((i for i in range(len(chosen), n) if counts[i] > 0), key=lambda i: (-counts[i], i))
        chosen += rest[:most_negative]
    return chosen


def heat_map(run, arrays: dict[str, np.ndarray], first: int, most_negative: int) -> tuple[list[dict], dict]:
    """Per shown example: a header and one coloured span per response token, coloured by the ranked value, with
    its numbers on hover."""
    from forgetune.data.collator import response_positions
    from forgetune.data.corpus import example_offsets
    from forgetune.scoring.partition import NEGATIVE, POSITIVE

    offsets = example_offsets(run.examples)
    polarity, corrupted, ranked = arrays.get("polarity"), arrays.get("corrupted"), arrays["ranked"]
    p = run.cfg.partition
    name, _, meaning = RANKED[p.rank_by]
    tau = p.negative_below if polarity is not None else None
    centre = colour_centre(ranked, p.rank_by, p.rho, tau)
    shown = pick_examples(offsets, polarity, first, most_negative)
    slices = [slice(int(offsets[i]), int(offsets[i + 1])) for i in shown]
    values = np.concatenate([ranked[s] for s in slices]) if slices else np.zeros(0)
    # The colour scale is symmetric around the centre and saturates at the 99th percentile of the shown tokens'
    # distance to it.
    limit = float(np.percentile(np.abs(values - centre), 99)) if values.size else 0.0
    limit = limit if limit > 0 else 1.0
    names = {POSITIVE: "positive", NEGATIVE: "negative"}
    out = []
    for i, s in zip(shown, slices, strict=True):
        ex = run.examples[i]
        ids = [ex.input_ids[p] for p in response_positions(ex.labels)]
        spans = []
        for k, token in enumerate(ids):
            t = s.start + k
            score = float(arrays["scores"][t])
            title = [f"token {token}", f"CE_base {float(arrays['ce_base'][t]):.4f}",
                     f"CE_ref {float(arrays['ce_ref'][t]):.4f}", f"score {score:+.4f}"]
            if p.rank_by != "difference":
                title.append(f"ranked: {name} {float(ranked[t]):+.4f}")
            classes = ["tok"]
            if polarity is not None:
                title.append(names.get(int(polarity[t]), "ignored"))
                if polarity[t] == NEGATIVE:
                    classes.append("neg")
            if corrupted is not None and corrupted[t]:
                title.append("corrupted (differs from the clean answer)")
                classes.append("bad")
            spans.append(_span(run.tokenizer.decode([token]), classes, (float(ranked[t]) - centre) / limit,
                               "\n".join(title)))
        head = [f"#{i}", str(ex.id), f"{len(ids)} tokens"]
        if polarity is not None:
            head.append(f"{int((np.asarray(polarity[s]) == NEGATIVE).sum())} negatives")
        if ex.meta.get("corrupted"):
            head.append("corrupted example")
        if ids:
            head.append(f"min {name} {float(np.min(ranked[s])):+.3f}")
        prompt = ex.prompt_messages[-1]["content"] if ex.prompt_messages else ""
        out.append({"id": ex.id, "head": " · ".join(head), "prompt": prompt, "tokens": Markup("").join(spans)})
    legend = {"name": name, "low_value": f"{centre - limit:.3g}", "centre": f"{centre:.3g}",
              "high_value": f"{centre + limit:.3g}", "meaning": meaning, "low": _colour(-1.0)[0],
              "high": _colour(1.0)[0], "partition": polarity is not None, "truth": corrupted is not None}
    return out, legend


def _colour(t: float) -> tuple[str, str]:
    """(background, text colour) on a diverging white-centred scale; t in [-1, 1] (clipped)."""
    t = max(-1.0, min(1.0, t))
    end = POS_RGB if t > 0 else NEG_RGB
    rgb = [round(255 + (c - 255) * abs(t)) for c in end]
    return "#{:02x}{:02x}{:02x}".format(*rgb), "#fff" if abs(t) > 0.6 else "#111"


def _span(text: str, classes: list[str], t: float, title: str) -> Markup:
    """One token; text and title are escaped (corpus text is untrusted); newlines stay visible and hoverable."""
    text = text.replace("\n", "↵\n") if text else "∅"
    bg, fg = _colour(t)
    return Markup('<span class="{}" style="background:{};color:{}" title="{}">{}</span>').format(
        " ".join(classes), bg, fg, title, text)


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{{ csp }}">
<title>forgetune report: {{ run_dir }}</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1400px;padding:0 16px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.sub{color:#666}.missing{background:#fff6d5;border:1px solid #e5c100;padding:8px 14px;border-radius:4px}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.plots{display:flex;flex-wrap:wrap;gap:16px}.plots img{border:1px solid #eee;max-width:100%}
.legend{display:flex;align-items:center;gap:10px;margin:8px 0 12px;flex-wrap:wrap}
.bar{width:220px;height:14px;border:1px solid #ccc}
.ex{margin:10px 0;padding:8px 10px;border:1px solid #e4e4e4;border-radius:4px}
.exhead{font-size:12px;color:#555}.prompt{font-size:13px;color:#333;margin:2px 0 4px}
.tokens{font:13px/2 ui-monospace,SFMono-Regular,Menlo,monospace;white-space:pre-wrap;word-break:break-word}
.tok{padding:1px 0;margin-right:1px;border-radius:2px}
.tok.neg{box-shadow:inset 0 -3px 0 #000}
.tok.bad{outline:1.5px dashed #7a0000;outline-offset:-1px}
pre{background:#f7f7f7;padding:10px;overflow:auto;font-size:12px}
</style></head><body>
<h1>forgetune report</h1>
<div class="sub">{{ run_dir }}{% if objective %} · objective {{ objective }}{% endif %} · generated {{ created }}</div>
{% if missing %}<h2>Missing</h2><ul class="missing">{% for m in missing %}<li>{{ m }}</li>{% endfor %}</ul>{% endif %}
{% if summary %}<h2>Summary</h2>
<table><tr><th>corpus</th><th></th></tr>
{% for k, v in summary.data.items() %}<tr><td>{{ k }}</td><td class="num">{{ v }}</td></tr>{% endfor %}</table>
<p></p><table><tr><th>stage</th><th>seconds</th><th>counts, losses</th></tr>
{% for s in summary.stages %}<tr><td>{{ s.name }}</td><td class="num">{{ s.seconds }}</td><td>{{ s.details }}</td></tr>
{% endfor %}</table>{% endif %}
{% if loss_png or hist_png %}<h2>Losses and scores</h2><div class="plots">
{% if loss_png %}<img alt="loss curves" src="{{ loss_png }}">{% endif %}
{% if hist_png %}<img alt="score histogram" src="{{ hist_png }}">{% endif %}</div>{% endif %}
{% if examples %}<h2>Token heat map ({{ examples|length }} examples)</h2>
<div class="legend"><span>{{ legend.name }} {{ legend.low_value }}</span><span class="bar"
style="background:linear-gradient(to right,{{ legend.low }},#fff,{{ legend.high }})"></span>
<span>{{ legend.high_value }}</span>
<span class="sub">white: {{ legend.centre }}; {{ legend.meaning }} Hover a token for its numbers.</span>
{% if legend.partition %}<span class="tok neg">&nbsp;negative&nbsp;</span>{% endif %}
{% if legend.truth %}<span class="tok bad">&nbsp;corrupted&nbsp;</span>{% endif %}</div>
{% for ex in examples %}<div class="ex" data-example="{{ ex.id }}"><div class="exhead">{{ ex.head }}</div>
<div class="prompt">{{ ex.prompt }}</div><div class="tokens">{{ ex.tokens }}</div></div>
{% endfor %}{% endif %}
<h2>Config</h2><details><summary>config.yaml</summary><pre>{{ config }}</pre></details>
</body></html>
"""


def render(ctx: dict[str, Any]) -> str:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    return env.from_string(TEMPLATE).render(csp=CSP, **ctx)
