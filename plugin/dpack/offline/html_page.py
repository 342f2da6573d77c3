"""One self-contained HTML page from plain parts (headings, key-value lists, tables, images): the
evaluation report and the learning report. Every text is escaped here, so values from captures (an
attacker's flow keys, a site name) cannot add markup; images are files beside the page."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #1b1b1b; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { font-size: 1.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .6em 0; } td, th { padding: .25em .7em; border-bottom: 1px solid #ddd; }
th { text-align: left; background: #f3f3f3; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.head td { border: 0; padding: .1em .7em .1em 0; } .bad { color: #a40000; font-weight: 600; }
.ok { color: #1d6b1d; font-weight: 600; } figure { display: inline-block; margin: .5em 1em .5em 0; }
figcaption { font-size: .9em; color: #555; } img { max-width: 34em; border: 1px solid #ddd; }
code { background: #f3f3f3; padding: 0 .2em; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, int | float):
        return f"<td class='n'>{esc(_num(value))}</td>"
    return f"<td>{esc(value)}</td>"


def _num(v: float) -> str:
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(c) for c in r) + "</tr>" for r in rows)
    return f"<table class='{esc(cls)}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def facts(items: Iterable[tuple[str, Any]]) -> str:
    """A key-value list (no header row)."""
    rows = "".join(f"<tr><th>{esc(k)}</th>{_cell(v)}</tr>" for k, v in items)
    return f"<table class='head'>{rows}</table>"


def figure(src: str, caption: str) -> str:
    # data-loaded: the image's width once the browser decoded it (what the report's browser test reads)
    return (
        f"<figure><img src='{esc(src)}' alt='{esc(caption)}' onload='this.dataset.loaded=this.naturalWidth'>"
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def para(text: str, cls: str = "") -> str:
    return f"<p class='{esc(cls)}'>{esc(text)}</p>"


def page(title: str, parts: Iterable[tuple[str, str]]) -> str:
    """``parts``: (section heading or "", its HTML made by the functions above)."""
    body = "".join((f"<h2>{esc(h)}</h2>" if h else "") + content for h, content in parts)
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body><h1>{esc(title)}</h1>{body}</body></html>\n"
    )
