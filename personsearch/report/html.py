"""A self-contained HTML report: tables, figures and pictures embedded as data URIs (one file)."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personsearch.io import atomic_open

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
.note { color: #666; font-size: 0.9em; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figcaption { font-size: 0.85em; color: #444; text-align: center; }
img { max-width: 100%; }
.row { display: flex; flex-wrap: nowrap; gap: 6px; align-items: flex-start; overflow-x: auto; }
.row figure { margin: 0; }
.hit { outline: 4px solid #2a2; } .miss { outline: 4px solid #c22; }
"""


def png_data_uri(image: Any) -> str:
    """A PIL image, a matplotlib figure, PNG bytes or a PNG file path, as a data URI."""
    if isinstance(image, bytes):
        data = image
    elif isinstance(image, str | os.PathLike):
        data = Path(image).read_bytes()
    else:
        buffer = io.BytesIO()
        if hasattr(image, "savefig"):
            image.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        else:
            image.save(buffer, format="PNG")
        data = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def jpeg_data_uri(image: Any, quality: int = 85) -> str:
    """A PIL image as a JPEG data URI (much smaller than PNG for photos)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; floats are printed with 4 significant decimals."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        return html.escape(str(value))

    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(uri: str, caption: str = "", css_class: str = "", width: int | None = None) -> str:
    """An embedded image with an optional caption."""
    style = f' style="width:{width}px"' if width else ""
    klass = f' class="{css_class}"' if css_class else ""
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure{style}><img src="{uri}"{klass} alt="{html.escape(caption)}">{cap}</figure>'


@dataclass
class Report:
    """Accumulates sections and writes one self-contained HTML file."""

    title: str
    subtitle: str = ""
    sections: list[tuple[str, str]] = field(default_factory=list)

    def add(self, heading: str, body_html: str) -> None:
        self.sections.append((heading, body_html))

    def render(self) -> str:
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1>",
        ]
        if self.subtitle:
            parts.append(f"<p class='note'>{html.escape(self.subtitle)}</p>")
        for heading, body in self.sections:
            parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the report atomically and return its path."""
        with atomic_open(path, "w", encoding="utf-8") as handle:
            handle.write(self.render())
        return Path(path)
