"""The HTML report shows the results: `snakemake --report` on a real (tiny) study, read in
headless Chromium after its JavaScript ran, holds the findings, the runs and every figure with its
caption on the page it opens on, not only as links."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_STUDY, snakemake, write_yaml

from lmablate.figures.registry import DEFAULT_FIGURES, caption_text
from lmablate.results.page import results_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def squash(text: str) -> str:
    """Whitespace collapsed to single spaces (wrapped text and rendered HTML compare equal)."""
    return re.sub(r"\s+", " ", text).strip()


class Rendered(HTMLParser):
    """What a reader sees in a DOM: its text outside <script>, <style> and <template>, the text
    and the embedded images inside the results section."""

    HIDDEN = {"script", "style", "template"}
    VOID = {"img", "br", "hr", "meta", "link", "input", "source", "col", "area", "base", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, bool]] = []  # (tag, opens the results section)
        self.text: list[str] = []
        self.section_text: list[str] = []
        self.section_images: list[str] = []

    def _in(self, pred) -> bool:
        return any(pred(tag, section) for tag, section in self.stack)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img" and self._in(lambda t, s: s):
            self.section_images.append(attrs.get("src") or "")
        if tag not in self.VOID:
            self.stack.append((tag, attrs.get("id") == "lmablate-results"))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        if self._in(lambda t, s: t in self.HIDDEN):
            return
        self.text.append(data)
        if self._in(lambda t, s: s):
            self.section_text.append(data)


def rendered(html: str) -> Rendered:
    page = Rendered()
    page.feed(html)
    page.close()
    return page


def first_finding(analysis: str) -> str:
    """The first finding of analysis.txt, its wrapped lines joined."""
    block = analysis.split("Findings:\n", 1)[1]
    return squash(block.split("\n  - ")[0].removeprefix("  - "))


def caption_sentence(kind: str) -> str:
    """The first sentence of the report caption of a figure kind (its registry row's)."""
    return squash(caption_text(kind)).split(". ")[0]


@pytest.fixture(scope="module")
def study_report(tmp_path_factory) -> Path:
    """The tiny study run with real snakemake, then its report: the workdir."""
    workdir = tmp_path_factory.mktemp("report")
    write_yaml(workdir / "study.yaml", json.loads(json.dumps(TINY_STUDY)))
    snakemake(workdir, "-c2")
    snakemake(workdir, "--report", "results/tiny/report.html")
    return workdir


@pytest.mark.workflow
@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install "
                    "chromium); .ci/run installs it")
def test_report_landing_page_shows_findings_runs_and_figures(study_report, tmp_path):
    res = study_report / "results" / "tiny"
    proc = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                           "--virtual-time-budget=10000", "--dump-dom",
                           (res / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = rendered(proc.stdout)
    shown = squash(" ".join(page.section_text))
    # the landing page rendered the results section (React inserts it: not in the raw script)
    assert "Results: study tiny" in shown
    assert first_finding((res / "analysis.txt").read_text()) in shown
    runs = pd.read_csv(res / "runs.csv")
    assert set(runs.run_id) <= set(shown.split())
    assert "Findings" in shown and "Ranking by final validation loss" in shown
    # every figure of the study: its name, its caption and the image itself, embedded
    figures = sorted(p.stem for p in (res / "plots").glob("*.png"))
    assert {"loss_curves", "final_val_loss"} <= set(figures)
    for name in figures:
        assert f"{name} " in shown, name
        assert caption_sentence(DEFAULT_FIGURES[name][0]) in shown, name
    n_figures = len(figures)
    assert len(page.section_images) == n_figures
    assert all(src.startswith("data:image/png;base64,") for src in page.section_images)


@pytest.mark.workflow
@pytest.mark.slow
def test_results_page_is_self_contained_and_nothing_left_to_do(study_report):
    res = study_report / "results" / "tiny"
    page = rendered((res / "results.html").read_text())
    shown = squash(" ".join(page.section_text))
    assert first_finding((res / "analysis.txt").read_text()) in shown
    assert caption_sentence("loss_curves") in shown
    assert len(page.section_images) == len(list((res / "plots").glob("*.png")))
    assert not re.search(r'src="(?!data:)', (res / "results.html").read_text())
    proc = snakemake(study_report, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.workflow
@pytest.mark.slow
def test_report_files_each_figure_under_its_kinds_caption(study_report):
    """snakemake --report reads each figure's caption from its kind's registry row (written for
    it at parse time), rendered by the report itself next to the figure."""
    res = study_report / "results" / "tiny"
    html = (res / "report.html").read_text()
    figures = sorted((res / "plots").glob("*.png"))
    assert figures
    for png in figures:
        start = html.index(f'"results/tiny/plots/{png.name}": {{"name"')
        entry = re.compile(r'"caption": "((?:[^"\\]|\\.)*)"').search(html, start)
        assert entry, png.name
        shown = squash(re.sub(r"<[^>]+>", " ", json.loads(f'"{entry[1]}"')))
        assert caption_sentence(DEFAULT_FIGURES[png.stem][0]) in shown, png.name


@pytest.mark.workflow
@pytest.mark.slow
def test_results_page_escapes_what_it_shows(study_report):
    res = study_report / "results" / "tiny"
    runs = pd.read_csv(res / "runs.csv")
    summary = json.loads((res / "summary.json").read_text())
    summary["findings"] = ["<script>alert(1)</script> & <b>"]
    runs.loc[0, "differs"] = "model.ffn=<img src=x>"
    html = results_html(runs, summary, "a<b")
    assert "<script>alert" not in html and "<img src=x>" not in html and "a<b" not in html
    shown = squash(" ".join(rendered(html).section_text))
    assert "<script>alert(1)</script> & <b>" in shown
    assert "model.ffn=<img src=x>" in shown and "Results: study a<b" in shown
