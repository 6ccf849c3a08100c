"""Building blocks of autoclf's HTML reports: one self-contained file that works offline.

Plotly's JavaScript is embedded once in the page (no CDN), and images are embedded as data
URIs, so a report can be mailed, archived or opened on a machine with no network.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable

import numpy as np
from PIL import Image

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5rem 0; }
td, th { padding: .25rem .75rem; border-bottom: 1px solid #eee; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.grid { display: flex; flex-wrap: wrap; gap: .5rem; }
figure { margin: 0; text-align: center; font-size: .75rem; max-width: 140px; }
figure img { max-width: 128px; max-height: 128px; display: block; margin: auto; }
figcaption { overflow-wrap: anywhere; }
.pair { display: flex; gap: 1rem; align-items: center; margin: .5rem 0; }
.warn { color: #a15c00; } .muted { color: #777; }
"""


def page(title: str, body: Iterable[str]) -> str:
    """A whole HTML document with plotly's JavaScript inline."""
    from plotly.offline import get_plotlyjs

    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{STYLE}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head>"
        f"<body>\n<h1>{escape(title)}</h1>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def figure(fig) -> str:
    """A plotly figure as a <div> that uses the page's embedded plotly.js."""
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def plotly_text(text: object) -> str:
    """Text for a plotly label, legend or hover: plotly reads ``<b>``, ``<br>``, ``<a>`` and
    entities in them as its own markup, so a class named ``a<b>c`` showed as a bold "c"."""
    return escape(text)


def thumbnail(image: np.ndarray, *, size: int = 128) -> str:
    """An RGB array as a JPEG data URI, its longer side ``size`` px."""
    im = Image.fromarray(image)
    im.thumbnail((size, size))
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def tile(uri: str, caption: str, *, title: str = "") -> str:
    return (
        f"<figure title='{escape(title)}'><img src='{uri}' alt='{escape(caption)}'>"
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: object) -> str:
    if isinstance(value, (int, float, np.integer, np.floating)):
        return f"<td class='num'>{escape(value)}</td>"
    return f"<td>{escape(value)}</td>"
