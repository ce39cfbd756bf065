"""``/docs``: the OpenAPI document rendered server-side as one plain HTML page.

Why server-side: the page must work offline (no CDN, no JavaScript bundle to vendor), and
rendering the same document ``/openapi.json`` serves keeps the two from drifting. Pure.
"""

from __future__ import annotations

import re
from html import escape
from typing import Any

CODE_SPAN = re.compile(r"`([^`]+)`")

STYLE = """body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}
code,pre{background:#f4f4f4;padding:.1rem .3rem}pre{padding:.6rem;overflow-x:auto}
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ddd;padding:.3rem;
text-align:left;vertical-align:top}h2{border-top:1px solid #ccc;padding-top:1rem}"""


def _text(markdown: str) -> str:
    """The descriptions' little Markdown: `code` spans and blank-line paragraphs."""
    html = CODE_SPAN.sub(r"<code>\1</code>", escape(markdown))
    return html.replace("\n\n", "</p><p>")


def _schema_text(schema: dict[str, Any]) -> str:
    kind = schema.get("type", "")
    text = "/".join(kind) if isinstance(kind, list) else str(kind)
    if "enum" in schema:
        text += " (" + " | ".join(str(v) for v in schema["enum"]) + ")"
    if "default" in schema:
        text += f", default {schema['default']}"
    if "maximum" in schema:
        text += f", max {schema['maximum']}"
    return text


def _parameters(parameters: list[dict[str, Any]]) -> str:
    if not parameters:
        return ""
    rows = "".join(
        f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p['in'])}"
        f"{' (required)' if p.get('required') else ''}</td>"
        f"<td>{escape(_schema_text(p['schema']))}</td><td>{_text(p['description'])}</td></tr>"
        for p in parameters)
    return ("<table><tr><th>parameter</th><th>in</th><th>type</th><th>meaning</th></tr>"
            f"{rows}</table>")


def _example(method: str, path: str) -> str:
    url = "http://127.0.0.1:8080" + path.replace("{page_id}", "home")
    if method == "post":
        event = '{"page_id":"home","user_id":"u1"}'
        body = event if path == "/track" else f"[{event}]"
        return f"curl -X POST '{url}' -H 'Content-Type: application/json' -d '{body}'"
    if path.startswith("/stats"):
        url += "?site_id=default"
    return f"curl -H 'Authorization: Bearer $TOKEN' '{url}'"


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, item in document["paths"].items()
            for method, op in item.items()]


def render_docs(document: dict[str, Any]) -> str:
    info = document["info"]
    sections = []
    for method, path, op in _operations(document):
        responses = "".join(f"<li><b>{escape(code)}</b>: {_text(r['description'])}</li>"
                            for code, r in op["responses"].items())
        sections.append(
            f"<h2 id=\"{escape(op['operationId'])}\">{method.upper()} "
            f"<code>{escape(path)}</code> — "
            f"{escape(op['summary'])}</h2><p>{_text(op['description'])}</p>"
            f"{_parameters(op.get('parameters', []))}<ul>{responses}</ul>"
            f"<pre>{escape(_example(method, path))}</pre>")
    toc = "".join(f"<li><a href=\"#{escape(op['operationId'])}\">{method.upper()} "
                  f"{escape(path)}</a></li>" for method, path, op in _operations(document))
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(info['title'])}</title><style>{STYLE}</style></head><body>"
            f"<h1>{escape(info['title'])}</h1><p>{_text(info['description'])}</p>"
            "<p>Send <code>Authorization: Bearer &lt;token&gt;</code> with every stats "
            "request. Every stats endpoint answers CSV with <code>format=csv</code> or "
            "<code>Accept: text/csv</code>. The machine-readable form of this page is "
            "<a href=\"/openapi.json\">/openapi.json</a> (OpenAPI 3.1).</p>"
            f"<ul>{toc}</ul>{''.join(sections)}</body></html>")
