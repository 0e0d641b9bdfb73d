"""The card as one self-contained HTML page: no scripts, no network, inline SVG bar charts.

Each fact (:class:`~xgen_data.interop.facts.Fact`) is a section with an anchor in the page's table of contents,
a bar chart when it has a label and a count to draw, its table, and the query it came from.
"""
from __future__ import annotations

import html

from xgen_data.interop.facts import Fact

# key: (label columns, value column) of the chart drawn for that fact
CHARTS = {
    "sources": (("subset", "source"), "kept_tokens"),
    "funnel": (("outcome",), "documents"),
    "licenses": (("license_policy", "reason"), "documents"),
    "kept_licenses": (("license",), "tokens"),
    "languages": (("language",), "tokens"),
    "lengths": (("log2_tokens",), "documents"),
    "decontamination": (("benchmark",), "documents"),
    "plan": (("stage", "subset"), "effective_tokens"),
    "plan_vs_packed": (("stage", "subset"), "packed_share"),
    "packed": (("stage", "substage", "split"), "tokens"),
    "packed_subsets": (("stage", "subset"), "tokens"),
    "packed_sources": (("source",), "tokens"),
}
MAX_BARS = 25
STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f3}
pre{background:#f6f6f6;padding:.5em;overflow-x:auto;white-space:pre-wrap}
.provider{background:#fff3c4;font-weight:bold}svg{display:block;margin:.5em 0}"""


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)


def chart(fact: Fact) -> str:
    """An inline SVG of horizontal bars for the fact's chart columns ('' when it has none or no rows)."""
    spec = CHARTS.get(fact.key)
    if spec is None or not fact.rows:
        return ""
    labels, value = spec
    li = [fact.columns.index(c) for c in labels]
    vi = fact.columns.index(value)
    rows = [(" / ".join(str(r[i]) for i in li), r[vi] or 0) for r in fact.rows[:MAX_BARS]]
    top = max(v for _, v in rows) or 1
    bar_h, label_w, bar_w = 18, 320, 420
    height = bar_h * len(rows) + 4
    parts = [f'<svg role="img" aria-label="{html.escape(fact.title)}" width="{label_w + bar_w + 120}" '
             f'height="{height}" xmlns="http://www.w3.org/2000/svg">']
    for i, (label, v) in enumerate(rows):
        y = i * bar_h + 2
        w = max(1, round(bar_w * v / top))
        parts.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end" font-size="12">'
                     f'{html.escape(label[:48])}</text><rect x="{label_w}" y="{y}" width="{w}" height="{bar_h - 4}" '
                     f'fill="#4a7bd0"/><text x="{label_w + w + 4}" y="{y + 13}" font-size="12">{_fmt(v)}</text>')
    return "".join(parts) + "</svg>"


def table(fact: Fact) -> str:
    """The fact's rows as an HTML table (numbers right-aligned)."""
    if not fact.rows:
        return "<p>(no rows)</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in fact.columns)
    body = "".join("<tr>" + "".join(
        f'<td class="n">{_fmt(v)}</td>' if isinstance(v, (int, float)) else f"<td>{html.escape(_fmt(v))}</td>"
        for v in r) + "</tr>" for r in fact.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def section(fact: Fact) -> str:
    src = (f"<details><summary>Query (<code>xgen sql</code>)</summary><pre>{html.escape(fact.source)}</pre></details>"
           if fact.kind == "sql" else f"<p>Source: <code>{html.escape(fact.source)}</code></p>")
    return (f'<section id="{fact.key}"><h2>{html.escape(fact.title)}</h2>{chart(fact)}{table(fact)}{src}'
            "</section>")


def page(facts: dict[str, Fact], manifest: dict) -> str:
    """The whole page (UTF-8 HTML5): header, table of contents, one section per fact, the recipe text."""
    title = f"xgen shards of recipe {manifest.get('recipe')}"
    toc = "".join(f'<li><a href="#{f.key}">{html.escape(f.title)}</a></li>' for f in facts.values())
    body = "".join(section(f) for f in facts.values())
    missing = "" if "sources" in facts else (
        '<p class="provider">Made without the corpus: corpus facts (sources, drop reasons, licenses, languages, '
        "duplicates, decontamination, lengths) need <code>xgen card --corpus</code>.</p>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>Recipe <code>{html.escape(str(manifest.get('recipe')))}</code> (SHA-256 "
            f"<code>{html.escape(str(manifest.get('recipe_sha256')))}</code>), seed {_fmt(manifest.get('seed'))}, "
            f"shards manifest SHA-256 <code>{html.escape(str(manifest.get('manifest_sha256')))}</code>. Every table "
            "names the query or manifest field it came from.</p>"
            f'{missing}<nav><ol>{toc}<li><a href="#recipe">Recipe</a></li></ol></nav>{body}'
            f'<section id="recipe"><h2>Recipe</h2><p>Source: <code>manifest.json: recipe_toml</code></p>'
            f"<pre>{html.escape(manifest.get('recipe_toml', ''))}</pre></section></body></html>\n")
