"""Pages for people: GET / and /playground (try each loaded model in the browser) and GET /docs
(Swagger UI over /openapi.json).

Everything the pages load comes from this server: the playground's files ship in api/static/,
Swagger UI's in the swagger-ui-py package. The pages are open (they hold no data); what they
show comes from the same public routes any client calls, with the key the person types, so keys
and limits apply as they do to any client. A strict Content-Security-Policy keeps every script
in its own file from this origin and every request on this origin.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import cache
from pathlib import Path
from typing import Any

import falcon

from api.auth import Access

STATIC = Path(__file__).parent / "static"
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "font-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".png": "image/png",
}
# Swagger UI's two files the reference page needs, from swagger-ui's own distribution.
SWAGGER_FILES = ("swagger-ui.css", "swagger-ui-bundle.js")


def swagger_ui_directory() -> Path:
    """Swagger UI's distribution as the swagger-ui-py package ships it (found without importing
    the package, whose web-framework adapters the server does not use)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is not installed: pip install swagger-ui-py")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def asset_paths() -> dict[str, Path]:
    """Every file the pages may load, by the name it is served under (/pages/NAME)."""
    own = {path.name: path for path in STATIC.iterdir() if path.suffix in TYPES}
    swagger = swagger_ui_directory()
    return {**own, **{name: swagger / name for name in SWAGGER_FILES}}


@cache
def _read(path: Path) -> tuple[bytes, str]:
    """A file's bytes and their ETag (the files do not change while the server runs)."""
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()[:32]


def _send(req: falcon.Request, resp: falcon.Response, path: Path) -> None:
    """The file, or 304 when the browser holds this version (Swagger UI's bundle is 1.5 MB).
    Serves HEAD too: Falcon sends a GET answer's headers without its body."""
    data, etag = _read(path)
    resp.etag = etag
    held = req.if_none_match or ()
    if etag in held or "*" in held:
        resp.status = falcon.HTTP_NOT_MODIFIED
        return
    resp.content_type = TYPES[path.suffix]
    resp.data = data


class Page:
    """One HTML page of api/static."""

    access = Access.OPEN

    def __init__(self, file: str) -> None:
        self.path = STATIC / file

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _send(req, resp, self.path)

    on_head = on_get


class Home(Page):
    """GET /: the playground. POST / is Text Embeddings Inference's root, which answers as the
    served model's own route (api.routes.tei.Root) and needs a key like any API route."""

    post_access = Access.API

    def __init__(self, tei_root: Any) -> None:
        super().__init__("playground.html")
        self.tei_root = tei_root

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.tei_root.on_post(req, resp)


class PageAsset:
    """GET /pages/NAME: a script, style sheet or image of the pages; nothing else is served."""

    access = Access.OPEN

    def __init__(self) -> None:
        self.paths = asset_paths()

    def on_get(self, req: falcon.Request, resp: falcon.Response, file: str) -> None:
        path = self.paths.get(file)
        if path is None:
            raise falcon.HTTPNotFound(description=f"there is no page file {file!r}")
        _send(req, resp, path)

    on_head = on_get


class PageHeaders:
    """The pages' security headers on every answer of their routes: the files, and also their
    304s, 404s, 405s and OPTIONS answers (which a responder never sees)."""

    def process_response(self, req, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        if isinstance(resource, (Page, PageAsset)):
            resp.set_headers(HEADERS)


def add_page_routes(app: falcon.App, tei_root: Any) -> None:
    """The pages; `tei_root` answers POST / (TEI's root)."""
    app.add_route("/", Home(tei_root))
    app.add_route("/playground", Page("playground.html"))
    app.add_route("/docs", Page("docs.html"))
    app.add_route("/pages/{file}", PageAsset())
    app.add_middleware(PageHeaders())
