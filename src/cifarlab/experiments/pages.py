"""Self-contained HTML pages and PNG figures for reports, comparisons and sweep leaderboards.

Pages open from disk with no server and no network: figures are embedded as base64 PNG data
URIs, the style sheet is inline and there is no script. Every page is a Jinja2 template in
cifarlab/templates/ (package data) extending base.html, rendered by `render` with autoescape on:
whatever text comes from a run (names, config values, reasons, a tampered file's strings) is
escaped by default, never by remembering to.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from cifarlab.common.files import RunError, atomic_write_bytes

try:
    import jinja2
    import matplotlib
except ModuleNotFoundError as e:  # the core install has neither
    raise RunError(f"reports need {e.name} ({e}); install it with: pip install 'cifarlab[report]'") from None

matplotlib.use("Agg")  # headless; must precede any pyplot import anywhere in the process

from matplotlib.figure import Figure  # noqa: E402


@dataclass(frozen=True)
class Note:
    """A boxed remark on a page (macros.html `notes`); `bad` marks a problem."""

    text: str
    bad: bool = False


@cache
def environment() -> jinja2.Environment:
    """The templates of cifarlab/templates, escaping every value put into any of them."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("cifarlab", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the page instead of vanishing from it
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template_name: str, **context: Any) -> str:
    """The page `template_name` (a file in cifarlab/templates) filled with `context`, values escaped."""
    return environment().get_template(template_name).render(**context)


def fmt(value: Any, kind: str = "") -> str:
    """A value as table text: percentages, seconds, counts; None as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "s":
        return f"{value:,.1f} s" if value >= 1 else f"{value * 1000:.1f} ms"
    if kind == "int":
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def data_uri(png: bytes) -> str:
    """A PNG as a data: URI, for an <img> that needs no file beside the page."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# ---------------------------------------------------------------- figures and files


def plain(text: str) -> str:
    """`text` for a matplotlib label, drawn as written: matplotlib reads the part between two `$`
    as mathtext (a run named `$x^$` would fail to render), and draws an escaped `\\$` as `$`."""
    return str(text).replace("$", r"\$")


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure not tied to pyplot (no global state, safe in any thread)."""
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save_png(fig: Figure, path: Path) -> bytes:
    """Render a figure to PNG, write it atomically to `path`, return the bytes for embedding."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    png = buffer.getvalue()
    atomic_write_bytes(path, png)
    return png


def write_page(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
