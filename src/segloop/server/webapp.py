"""Serving the built web app (``web/dist``) at ``/``.

`mount_web_app(app)` adds one catch-all ``GET``/``HEAD`` route, so it must be called after every
other route is registered. Files under the dist folder are served as they are (hashed assets
cached for a year, ``index.html`` never cached); any other path that is not under ``/api/``
gets ``index.html`` (the app routes in the browser). Unknown ``/api/...`` paths still answer a
JSON 404. When the dist folder has not been built, every page explains how to build it.

The dist folder is, in order: the ``dist`` argument, ``$SEGLOOP_WEB_DIST``, then ``web/dist``
of the source checkout this package runs from.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

__all__ = ["default_dist", "mount_web_app"]

_IMMUTABLE = "public, max-age=31536000, immutable"
_NO_CACHE = "no-cache"


def default_dist() -> Path:
    """Where the built app is looked for when no folder is given."""
    env = os.environ.get("SEGLOOP_WEB_DIST")
    if env:
        return Path(env)
    # src/segloop/server/webapp.py -> the checkout root is three folders above the package
    return Path(__file__).resolve().parents[3] / "web" / "dist"


def _missing_page(dist: Path) -> HTMLResponse:
    body = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>segloop: web app not built</title>
<style>body{{font-family:system-ui,sans-serif;max-width:44rem;margin:3rem auto;line-height:1.5;padding:0 1rem}}
code,pre{{background:#f3f3f3;padding:.1rem .3rem;border-radius:3px}}pre{{padding:.6rem}}</style></head><body>
<h1>The segloop web app has not been built</h1>
<p>The server is running and its REST API works (<a href="api/v1/docs">API documentation</a>),
but the browser app was not found in <code>{html.escape(str(dist))}</code>.</p>
<p>Build it once from the segloop checkout (needs Node.js 20 or newer and npm; nothing is
downloaded when the app runs):</p>
<pre>scripts/web.sh build</pre>
<p>or by hand: <code>cd web &amp;&amp; npm ci &amp;&amp; npm run build</code>. Then reload this page.
To serve a build from elsewhere, set <code>SEGLOOP_WEB_DIST</code> to its folder.</p>
</body></html>"""
    return HTMLResponse(body, status_code=503, headers={"Cache-Control": _NO_CACHE})


def mount_web_app(app: FastAPI, dist: Path | None = None) -> None:
    """Serve the built web app from ``dist`` at ``/`` (call after all other routes are added).

    A plain ``GET /`` route registered earlier (e.g. a JSON landing route) is removed so that the
    app's ``index.html`` answers ``/``."""
    folder = (dist if dist is not None else default_dist()).resolve()
    app.router.routes[:] = [
        r for r in app.router.routes
        if not (isinstance(r, Route) and r.path == "/" and r.methods is not None and "GET" in r.methods)
    ]

    def index() -> Response:
        page = folder / "index.html"
        if not page.is_file():
            return _missing_page(folder)
        return FileResponse(page, media_type="text/html", headers={"Cache-Control": _NO_CACHE})

    async def serve(path: str = "") -> Response:
        if path == "api" or path.startswith("api/"):
            return JSONResponse(
                {"error": {"code": "not_found", "message": f"no API route /{path}"}}, status_code=404
            )
        if path:
            target = (folder / path).resolve()
            if target.is_file() and target.is_relative_to(folder):
                cache = _IMMUTABLE if target.parent.name == "assets" else _NO_CACHE
                return FileResponse(target, headers={"Cache-Control": cache})
        return index()

    app.add_api_route("/", serve, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_api_route("/{path:path}", serve, methods=["GET", "HEAD"], include_in_schema=False)
