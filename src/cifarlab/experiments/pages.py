"""Self-contained HTML pages and PNG figures for reports, comparisons and sweep leaderboards.

Pages open from disk with no server and no network: figures are embedded as base64 PNG data
URIs, the style sheet is inline and there is no script. Every piece of text that comes from a
run (names, config values, reasons) goes through `html.escape`.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any, Iterable

from cifarlab.common.files import RunError, atomic_write_bytes

try:
    import matplotlib
except ModuleNotFoundError as e:  # the core install has no plotting
    raise RunError(f"reports need matplotlib ({e}); install it with: pip install 'cifarlab[report]'") from None

matplotlib.use("Agg")  # headless; must precede any pyplot import anywhere in the process

from matplotlib.figure import Figure  # noqa: E402

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.differs td { background: #fff4cc; } tr.differs th { background: #ffe58a; }
tr.failed td { color: #a00; }
.note { border-left: 4px solid #e0a800; background: #fff8e1; padding: 0.5em 0.8em; margin: 0.8em 0; }
.note.bad { border-color: #c00; background: #fdecea; }
img { max-width: 100%; height: auto; display: block; margin: 0.6em 0; }
.cols { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


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


def table(header: list[str], rows: Iterable[list[Any]], row_classes: Iterable[str] | None = None, num_from: int = 1) -> str:
    """An HTML table; cells are escaped; columns from `num_from` on are right-aligned."""
    rows = list(rows)
    classes = list(row_classes) if row_classes is not None else [""] * len(rows)
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row, cls in zip(rows, classes):
        cells = "".join(
            f'<td class="num">{esc(c)}</td>' if i >= num_from else f"<td>{esc(c)}</td>" for i, c in enumerate(row)
        )
        attr = f' class="{esc(cls)}"' if cls else ""
        body.append(f"<tr{attr}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def note(text: str, bad: bool = False) -> str:
    return f'<div class="note{" bad" if bad else ""}">{esc(text)}</div>'


def image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


def page(title: str, subtitle: str, body: list[str]) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{esc(title)}</h1><p class=\"sub\">{esc(subtitle)}</p>\n" + "\n".join(body) + "\n</body></html>\n"
    )


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
