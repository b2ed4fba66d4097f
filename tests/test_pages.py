"""The pages (report.html, compare.html, and the layout a sweep leaderboard shares) are Jinja2
templates with autoescape: markup from a tampered run folder shows as text, and wide tables
scroll inside the page instead of widening it."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import jinja2
import pytest
import torch

from cifarlab.experiments import pages
from cifarlab.experiments.compare import compare_runs
from cifarlab.experiments.report import build_report

QUIET = dict(log=lambda s: None, progress=False, device="cpu")
NAME = "run<img src=x onerror=alert(1)><script>alert(1)"  # a folder name cannot hold "/"
PRESET = "<script>alert('preset')</script>"
FITTED_ON = "<svg onload=alert(2)>validation split"
CLASS = "<script>alert('class')</script>"
CORRUPTION = "<script>alert('corruption')</script>"
SOURCE = "<iframe src=javascript:alert(4)>"
INJECTED = (NAME, PRESET, FITTED_ON, CLASS, CORRUPTION, SOURCE)
TTA = "<script>alert('tta')</script>"  # where a number belongs: refused by the file's schema


class Elements(HTMLParser):
    """The start tags and the text of a page, as a browser's parser sees them."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def tampered_run(tiny_run: Path, dest: Path) -> Path:
    """A copy of the tiny run whose folder name, config, checkpoint classes, calibration.json and
    robustness.json all carry markup (each file still passes its reader's checks)."""
    run = dest / NAME
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    config["train"]["preset"] = PRESET
    (run / "config.json").write_text(json.dumps(config))
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["meta"]["classes"][0] = CLASS
    torch.save(state, run / "checkpoint.pt")
    calibration = {"temperature": 1.5, "epoch": state["epoch"], "fitted_on": FITTED_ON, "tta": 0, "val_nll_before": 2.3, "val_nll_after": 2.2}
    (run / "calibration.json").write_text(json.dumps(calibration))
    robustness = {
        "checkpoint": "x",
        "epoch": state["epoch"],
        "tta": 0,
        "clean": {"images": 40, "accuracy": 0.5},
        "corruptions": {
            "source": SOURCE,
            "images": 40,
            "mean_accuracy": 0.3,
            "relative_drop": 0.4,
            "accuracy": {CORRUPTION: [0.5, 0.4, 0.3, 0.2, 0.1]},
        },
    }
    (run / "robustness.json").write_text(json.dumps(robustness))
    return run


def assert_escaped(page: str, strings: tuple[str, ...]) -> None:
    """No injected element, and each string shown as text, exactly as written."""
    parsed = Elements(page)
    assert not set(parsed.tags) & {"script", "iframe", "svg"} and "<script" not in page.lower(), parsed.tags
    text = "".join(parsed.text)
    for s in strings:
        assert s in text, s


def test_tampered_run_files_appear_escaped_in_the_report(tiny_run, tmp_path):
    run = tampered_run(tiny_run, tmp_path)
    text = build_report(run, tiny_run.parent / "data", **QUIET).read_text()
    assert_escaped(text, INJECTED)
    assert "Temperature T = 1.5000" in text  # the calibration section was drawn, with the tampered tta in it
    assert Elements(text).tags.count("img") == len(list(run.glob("report-*.png")))  # figures are the only images


def test_markup_where_a_number_belongs_is_refused_in_one_line(tiny_run, tmp_path):
    """calibration.json's `tta` once reached report.html unescaped; now each file's schema refuses
    text where its number belongs, in one line naming file and field: a damaged robustness.json
    stops the report, a damaged calibration.json is left out of it with the reason shown as text."""
    from cifarlab.common.files import RunError

    run = tampered_run(tiny_run, tmp_path)
    for name in ("calibration.json", "robustness.json"):
        record = json.loads((run / name).read_text())
        (run / name).write_text(json.dumps({**record, "tta": TTA}))
    with pytest.raises(RunError, match=r"robustness.json: tta should be an integer, found text$"):
        build_report(run, tiny_run.parent / "data", **QUIET)
    (run / "robustness.json").unlink()
    page = build_report(run, tiny_run.parent / "data", **QUIET).read_text()
    assert_escaped(page, ("calibration.json: tta should be an integer, found text",))


def test_tampered_run_files_appear_escaped_in_the_comparison(tiny_run, tmp_path):
    run = tampered_run(tiny_run, tmp_path)
    text = compare_runs([run, tiny_run], tmp_path / "cmp").read_text()
    assert_escaped(text, (NAME, PRESET, CORRUPTION, SOURCE))


def test_every_value_is_escaped_by_default():
    rendered = pages.render("leaderboard.html", title="<script>", subtitle="a & b", header=[], rows=[], row_classes=None, num_from=2, images=[])
    assert "<title>&lt;script&gt;</title>" in rendered and "a &amp; b" in rendered
    table = pages.render("leaderboard.html", title="t", subtitle="s", header=["<th>"], rows=[["<td>"]], row_classes=None, num_from=2, images=[])
    assert "<th>&lt;th&gt;</th>" in table and "<td>&lt;td&gt;</td>" in table
    with pytest.raises(jinja2.UndefinedError, match="'run_name' is undefined"):  # a name left out fails loudly
        pages.render("report.html")


# ---------------------------------------------------------------- wide tables in a 1280-px window


def page_width(browser, path: Path) -> dict:
    """The document's scroll width at a 1280-px viewport, and the widest table's own width."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    seen = page.evaluate("""() => ({
        page: document.documentElement.scrollWidth,
        table: Math.max(...Array.from(document.querySelectorAll('table')).map(t => t.scrollWidth)),
    })""")
    page.close()
    return seen


def test_wide_tables_scroll_inside_a_1280_px_page(tiny_run, tmp_path, browser):
    runs = []
    for n in range(8):  # eight runs with long names: the comparison's tables are far wider than the window
        run = tmp_path / "runs" / f"{n}-a-run-with-a-long-descriptive-name-lr0.05-wd5e-4-cutout-{n}"
        shutil.copytree(tiny_run, run)
        robustness = {
            "epoch": 2,
            "tta": 0,
            "clean": {"images": 40, "accuracy": 0.5},
            "corruptions": {"source": "generated", "images": 40, "mean_accuracy": 0.3, "accuracy": {"gaussian_noise": [0.5, 0.4, 0.3, 0.2, 0.1]}},
        }
        (run / "robustness.json").write_text(json.dumps(robustness))
        runs.append(run)
    comparison = compare_runs(runs, tmp_path / "cmp")
    report = build_report(runs[0], tiny_run.parent / "data", **QUIET)
    header = ["rank", "variant", *(f"a_long_setting_name_{k}" for k in range(24)), "status"]
    leaderboard = tmp_path / "leaderboard.html"  # the sweep leaderboard's template
    pages.write_page(
        leaderboard,
        pages.render(
            "leaderboard.html",
            title="Sweep",
            subtitle="wide",
            header=header,
            rows=[[1, "v", *range(24), "finished"]],
            row_classes=None,
            num_from=2,
            images=[],
        ),
    )
    for path in (comparison, report, leaderboard):
        seen = page_width(browser, path)
        assert seen["page"] <= 1280, (path.name, seen)
    assert page_width(browser, comparison)["table"] > 1280 and page_width(browser, leaderboard)["table"] > 1280


# ---------------------------------------------------------------- compare's curves name every run


def test_every_run_is_named_on_every_comparison_plot(tiny_run):
    import dataclasses

    from cifarlab.experiments.figures import curves_figure, lr_time_figure
    from cifarlab.experiments.runs import load_run

    with_val = load_run(tiny_run)
    # as preset fast: no validation split, and (killed early) one epoch: a lone point per panel
    no_val = dataclasses.replace(with_val, metrics=[{k: v for k, v in with_val.metrics[0].items() if not k.startswith("val_")}])
    labels = ["with-validation", "fast-like $x$"]
    for fig in (curves_figure([with_val, no_val], labels), lr_time_figure([with_val, no_val], labels)):
        (legend,) = fig.legends
        named = {t.get_text(): h.get_color() for t, h in zip(legend.get_texts(), legend.legend_handles)}
        assert list(named) == [r"with-validation", r"fast-like \$x\$"]  # every run, drawn as text (no mathtext)
        colours = list(named.values())
        assert len(set(colours)) == 2
        for ax in fig.axes:
            for line in ax.lines:  # each curve in the colour its run's legend entry shows
                run = 0 if line.get_label().startswith("with-validation") else 1
                assert line.get_color() == colours[run], (ax.get_title(), line.get_label())
        drawn = {line.get_color() for ax in fig.axes for line in ax.lines}
        assert drawn == set(colours)  # the run without validation figures is drawn too, not left out
