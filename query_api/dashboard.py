"""``/dashboard``: a live dashboard page for a browser, served by the query API.

Why a static page: it holds no data. Its script asks the stats endpoints (``/stats/compare``,
``/stats/timeseries``, ``/stats/top``, ``/stats/realtime``, ``/stats/sites``) with the token the
person types, kept in the tab's session storage, so the page itself is public and auth stays
where it is. The HTML, CSS and script are plain files in ``static/`` (readable and diffable);
they are joined once, at start, into one self-contained page: it works offline (nothing from
a CDN, the chart is SVG drawn by the script) and needs one route. A Content-Security-Policy
allows exactly that inline style and script (by hash) and requests to this origin only.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).resolve().parent / "static"
STYLE_SLOT = "/*STYLE*/"
SCRIPT_SLOT = "/*SCRIPT*/"


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def render_dashboard(static: Path = STATIC) -> tuple[str, str]:
    """The page, and the Content-Security-Policy that lets exactly its style and script run."""
    page = (static / "dashboard.html").read_text(encoding="utf-8")
    style = (static / "dashboard.css").read_text(encoding="utf-8")
    script = (static / "dashboard.js").read_text(encoding="utf-8")
    if page.count(STYLE_SLOT) != 1 or page.count(SCRIPT_SLOT) != 1:
        raise ValueError("dashboard.html needs one style slot and one script slot")
    page = page.replace(STYLE_SLOT, style).replace(SCRIPT_SLOT, script)
    policy = "; ".join([
        "default-src 'none'", f"style-src {_csp_hash(style)}",
        f"script-src {_csp_hash(script)}", "connect-src 'self'", "img-src 'self' data:",
        "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'"])
    return page, policy


def dashboard_routes(app: web.Application) -> None:
    """Registers ``GET /dashboard``; the page is rendered once, when the app is built."""
    page, policy = render_dashboard()
    body = page.encode()
    etag = hashlib.sha256(body).hexdigest()[:32]
    headers = {"Content-Security-Policy": policy, "Cache-Control": "no-cache",
               "ETag": f'"{etag}"', "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer"}

    async def dashboard(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == headers["ETag"]:
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, content_type="text/html", charset="utf-8",
                            headers=headers)

    app.router.add_get("/dashboard", dashboard)
