"""`forgetune report`: the HTML page's content, checked against the run's arrays, and the page in headless chromium.

The browser test needs Debian's chromium (`apt-get install -y chromium`; .ci/run installs it). Without it the test
skips locally but fails when CI=true, so CI cannot pass by skipping it.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from forgetune.cli import main
from forgetune.report import CSP
from tests_helpers import write_jsonl

FAST = ["--max-steps", "2", "--batch-size", "4", "--logging-steps", "1", "--score-batch-size", "5", "--quiet"]
SHOWN_FIRST, SHOWN_NEGATIVE = 5, 3


def cli(*args) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main([str(a) for a in args])
    return rc, out.getvalue()


@pytest.fixture(scope="module")
def report(tiny_model_dir, tmp_path_factory):
    """A tiny forget run (two-way split: plenty of negatives) on labelled arithmetic, and its report."""
    from forgetune.bench.data.arith import make_arith

    root = tmp_path_factory.mktemp("report")
    data = write_jsonl(root / "arith.jsonl", make_arith(24, noise=0.25, seed=3))
    out = root / "run"
    args = ["--model", tiny_model_dir, "--data", data, "--output", out, *FAST, "--objective", "forget",
            "--negative-below", "none"]
    assert cli("run", *args)[0] == 0
    rc, stdout = cli("report", out, "--examples", SHOWN_FIRST, "--most-negative", SHOWN_NEGATIVE, "--quiet")
    return out, rc, stdout


class Page(HTMLParser):
    """The token spans of each shown example (class list, title, text) and every image source."""

    def __init__(self):
        super().__init__()
        self.examples: dict[str, list[dict]] = {}
        self.images: list[str] = []
        self.links: list[str] = []
        self.csp: str | None = None
        self.current: str | None = None
        self.span: dict | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [v for k, v in attrs.items() if k in ("src", "href")]
        if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy":
            self.csp = attrs["content"]
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "div" and "data-example" in attrs:
            self.current = attrs["data-example"]
            self.examples[self.current] = []
        if tag == "span" and self.current and "tok" in attrs.get("class", "").split():
            self.span = {"classes": attrs["class"].split(), "title": attrs["title"], "text": ""}

    def handle_data(self, data):
        if self.span is not None:
            self.span["text"] += data

    def handle_endtag(self, tag):
        if tag == "span" and self.span is not None:
            self.examples[self.current].append(self.span)
            self.span = None


def test_report_page_matches_the_run(report):
    from forgetune import pipeline
    from forgetune.data.collator import response_positions
    from forgetune.metrics.detection import corrupted_tokens

    out, rc, stdout = report
    path = out / "report.html"
    assert rc == 0 and stdout.strip() == str(path)
    html = path.read_text(encoding="utf-8")
    page = Page()
    page.feed(html)

    run = pipeline.reopen(out)
    offsets = np.load(out / "score" / "offsets.npy")
    scores, polarity = np.load(out / "score" / "scores.npy"), np.load(out / "partition" / "polarity.npy")
    ce_base, ce_ref = np.load(out / "score" / "ce_base.npy"), np.load(out / "score" / "ce_ref.npy")
    corrupted, _ = corrupted_tokens(run.tokenizer, run.examples)
    assert corrupted.any()  # the labelled data really exercises the corrupted marks

    # Shown: the first examples, then the others with the most negatives (ties: corpus order).
    negatives = np.array([(polarity[a:b] == -1).sum() for a, b in zip(offsets[:-1], offsets[1:], strict=True)])
    rest = sorted((i for i in range(SHOWN_FIRST, len(run.examples)) if negatives[i]), key=lambda i: (-negatives[i], i))
    shown = list(range(SHOWN_FIRST)) + rest[:SHOWN_NEGATIVE]
    assert len(shown) == SHOWN_FIRST + SHOWN_NEGATIVE
    assert list(page.examples) == [run.examples[i].id for i in shown]

    probe = None
    for i in shown:
        ex, spans = run.examples[i], page.examples[run.examples[i].id]
        ids = [ex.input_ids[p] for p in response_positions(ex.labels)]
        assert len(spans) == len(ids) == offsets[i + 1] - offsets[i]  # one span per response token
        for k, (span, token) in enumerate(zip(spans, ids, strict=True)):
            t = offsets[i] + k
            text = run.tokenizer.decode([token])
            assert span["text"] == (text.replace("\n", "↵\n") or "∅")
            assert ("neg" in span["classes"]) == (polarity[t] == -1)
            assert ("bad" in span["classes"]) == bool(corrupted[t])
            if probe is None and polarity[t] == -1:
                probe = (span, t, token)
    shown_tokens = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in shown])
    all_spans = [s for spans in page.examples.values() for s in spans]
    assert sum("neg" in s["classes"] for s in all_spans) == (polarity[shown_tokens] == -1).sum() > 0
    assert sum("bad" in s["classes"] for s in all_spans) == corrupted[shown_tokens].sum()

    span, t, token = probe  # hover data of one negative token, read back from the score files
    assert span["title"].split("\n") == [f"token {token}", f"CE_base {ce_base[t]:.4f}", f"CE_ref {ce_ref[t]:.4f}",
                                         f"score {scores[t]:+.4f}", "negative",
                                         *(["corrupted (differs from the clean answer)"] if corrupted[t] else [])]

    # Token text is escaped: the chat template's end-of-turn token is a response token.
    assert "&lt;|im_end|&gt;" in html and "<|im_end|>" not in html
    # Self-contained: two embedded PNGs, nothing loaded from anywhere, and the page forbids loading anything.
    assert len(page.images) == 2 and all(s.startswith("data:image/png;base64,") for s in page.images)
    for src in page.images:
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    assert all(link.startswith("data:") for link in page.links)
    assert page.csp == CSP and "default-src 'none'" in CSP
    # Config and summary.
    assert "objective: forget\n" in html and "negative_below: null" in html
    for stage in ("reference", "score", "partition", "train"):
        assert f"<td>{stage}</td>" in html
    assert f"negative={int((polarity == -1).sum())}" in html and f"tokens={scores.size}" in html


def test_report_renders_in_headless_chromium(report, tmp_path):
    out, _, _ = report
    png = tmp_path / "report.png"
    console = render(out / "report.html", png)
    assert console == []
    assert png.stat().st_size > 10_000
    image = Image.open(png).convert("RGB")
    assert image.size == (1280, 1800)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, plots and the heat map, not a blank page
    assert max(count for count, _ in colours) < 0.95 * image.size[0] * image.size[1]


def test_console_detection_catches_errors(tmp_path):
    """The check above would see a broken page: a console.error, and a load the report's policy blocks."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><p>x</p><script>console.error('deliberate console error')</script>")
    assert any("deliberate console error" in line for line in render(bad, tmp_path / "bad.png"))
    remote = tmp_path / "remote.html"
    remote.write_text(f'<!doctype html><meta http-equiv="Content-Security-Policy" content="{CSP}">'
                      '<img src="https://example.invalid/x.png"><p>x</p>')
    assert any("Content Security Policy" in line for line in render(remote, tmp_path / "remote.png"))


def test_report_of_an_sft_run_shows_what_exists(tiny_model_dir, arith_jsonl, tmp_path):
    out, page_path = tmp_path / "run", tmp_path / "elsewhere" / "sft.html"
    assert cli("run", "--model", tiny_model_dir, "--data", arith_jsonl, "--output", out, *FAST,
               "--objective", "sft")[0] == 0
    rc, stdout = cli("report", out, "--output", page_path, "--quiet")
    assert rc == 0 and stdout.strip() == str(page_path) and not (out / "report.html").exists()
    html = page_path.read_text(encoding="utf-8")
    page = Page()
    page.feed(html)
    assert page.examples == {}  # no scores: no heat map
    assert len(page.images) == 1  # the loss curve, no histogram
    assert "objective sft does not score tokens" in html
    assert "<td>train</td>" in html and "objective: sft" in html


def test_report_of_a_bad_run_dir_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"forgetune: error: {tmp_path / 'nope'}: no such run directory"
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a forgetune run directory (no config.yaml)" in err


def test_report_plots_what_the_partition_ranked(tiny_model_dir, arith_jsonl, tmp_path, monkeypatch):
    """rank_by reference: histogram, tau line and heat map in -CE_ref, so every negative is drawn below tau (red)."""
    import forgetune.report

    out = tmp_path / "run"
    args = ["--model", tiny_model_dir, "--data", arith_jsonl, "--output", out, *FAST]
    assert cli("reference", *args)[0] == 0 and cli("score", *args)[0] == 0
    ce_ref = np.load(out / "score" / "ce_ref.npy")
    tau = float(np.median(-ce_ref))  # about half the tokens below it
    assert cli("partition", *args, "--rank-by", "reference", "--negative-below", tau)[0] == 0
    plotted = {}

    def histogram(values, corrupted, tau, xlabel):
        plotted.update(values=values, tau=tau, xlabel=xlabel)
        return "data:image/png;base64,"

    monkeypatch.setattr(forgetune.report, "histogram_plot", histogram)
    assert cli("report", out, "--examples", 24, "--most-negative", 0, "--quiet")[0] == 0
    np.testing.assert_array_equal(plotted["values"], -ce_ref)
    assert plotted["tau"] == tau and "CE_ref" in plotted["xlabel"] and "rank_by reference" in plotted["xlabel"]
    html = (out / "report.html").read_text(encoding="utf-8")
    negatives = re.findall(r'<span class="tok neg[^"]*" style="background:#(..)(..)(..)', html)
    assert len(negatives) == int((np.load(out / "partition" / "polarity.npy") == -1).sum()) > 0
    assert all(int(r, 16) >= int(b, 16) for r, _, b in negatives)  # red side of the scale (white at tau)
    assert "white: " + f"{tau:.3g}" in html


def chromium() -> str:
    path = shutil.which("chromium")
    if path:
        return path
    reason = "Debian's chromium is not installed (apt-get install -y chromium; .ci/run installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, so the browser test must run, not skip")
    pytest.skip(reason)


def render(page: Path, png: Path) -> list[str]:
    """Screenshot `page` in headless chromium and return the console messages it logged.

    With --enable-logging=stderr chromium logs every console message (any level, uncaught exceptions and blocked
    loads included) as an `INFO:CONSOLE` line; the report logs nothing, so any such line is a failure.
    """
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={png.parent / (png.stem + '-profile')}", "--window-size=1280,1800",
           f"--screenshot={png}", "--enable-logging=stderr", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=120)
    assert proc.returncode == 0 and png.is_file(), proc.stderr[-3000:]
    return [line for line in proc.stderr.splitlines() if re.search(r":CONSOLE\b", line)]
