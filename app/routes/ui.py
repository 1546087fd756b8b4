"""The page to try the model in a browser: ``GET /`` and its assets under ``/ui/``.

The page is three static files in ``app/static/`` (HTML, CSS, plain JavaScript: no build step,
nothing loaded from outside the server, so it works offline) and a favicon. It calls only the
public API (``/info``, ``/fill-mask``, ``/embed``, ``/embed_sparse``, ``/decode``, ``/rerank``,
``/tokenize``) like any other client, with the client's API key when the server wants one, so it
shows exactly what clients get. The page and its assets stay open when API keys are on (the
page asks for the key it then sends). Every response here carries a strict
Content-Security-Policy (scripts, styles, images and requests from this origin only; no inline
code).

``create_app`` mounts the router only when ``ServeConfig.ui`` is on; off, ``/`` and ``/ui/*``
are the API's ordinary 404. Deliberately not here: a middleware (the security headers are set on
these responses alone, so API routes pay nothing), an OpenAPI entry (the page is not API, and the
schema fuzzer must not see it), any private endpoint or call into the model, and templating (the
page fills itself in from ``/info``).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.errors import NotFoundError

STATIC = Path(__file__).resolve().parents[1] / "static"

# The assets by URL name, with their media types; nothing outside this table is ever read, so
# no request path can reach another file.
ASSETS = {
    "app.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
PAGE = "index.html"

# 'self' only, and no 'unsafe-inline': an injected <script> or style="" would not run. The
# script sets sizes and colours through the CSSOM (element.style), which CSP allows. Forms are
# submitted by the script, never natively (form-action 'none').
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate every load (a cheap 304 through the ETag) so that an upgraded server never runs
    # against a stale cached script.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@functools.cache
def _load(name: str) -> tuple[bytes, str]:
    """(content, ETag) of a file in ``app/static``, read once per process."""
    data = (STATIC / name).read_bytes()
    return data, '"' + hashlib.sha256(data).hexdigest()[:16] + '"'


def _serve(request: Request, name: str, media_type: str) -> Response:
    data, etag = _load(name)
    headers = {**SECURITY_HEADERS, "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media_type, headers=headers)


@router.api_route("/", methods=["GET", "HEAD"])
async def page(request: Request) -> Response:
    """The page (its panels are filled in by app.js from the public API)."""
    return _serve(request, PAGE, "text/html; charset=utf-8")


@router.api_route("/ui/{name}", methods=["GET", "HEAD"])
async def asset(name: str, request: Request) -> Response:
    """One of the page's assets, by name (anything else is 404)."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFoundError("Not Found")
    return _serve(request, name, media_type)
