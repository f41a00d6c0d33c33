"""Who may call what, decided from the route Falcon resolved (never from the raw path, which
has many spellings: `//unload_model`, `/./unload_model`, percent-encodings).

Each resource class says its access level in an `access` attribute: OPEN (no key), API (an API
key when keys are configured; the default) or ADMIN (an admin key when admin keys are
configured, else an API key). Management resources also set `management = True`, so a server
can answer them on its model port only.

Keys are compared in constant time, against every configured key, so timing reveals neither
key nor position.
"""

from __future__ import annotations

import enum
import hmac
from typing import Any

import falcon


class Access(enum.Enum):
    OPEN = "open"
    API = "api"
    ADMIN = "admin"


def access_of(resource: Any, method: str) -> Access:
    """The resource's access level for `method`: its own for that method where it sets one
    (`post_access`: GET / is an open page, POST / an API route), else the resource's."""
    return getattr(resource, f"{method.lower()}_access", None) or getattr(
        resource, "access", Access.API
    )


def request_port(req: falcon.Request) -> int | None:
    """The local port the request came in on (None outside gunicorn)."""
    connection = req.env.get("gunicorn.socket")
    return connection.getsockname()[1] if connection is not None else None


def _matches(token: bytes, keys: tuple[bytes, ...]) -> bool:
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token, key)
    return matched


class ApiKeys:
    """API keys open API routes; admin keys open every route. With admin keys but no API keys,
    API routes are open and only ADMIN routes need a key; with API keys but no admin keys, an
    API key opens ADMIN routes too."""

    def __init__(self, keys: tuple[str, ...], admin_keys: tuple[str, ...]) -> None:
        self.admin_keys = tuple(key.encode() for key in admin_keys)
        api_keys = tuple(key.encode() for key in keys)
        self.keys = api_keys + self.admin_keys if api_keys else ()

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params):
        access = access_of(resource, req.method)
        if req.method == "OPTIONS" or access is Access.OPEN:
            return
        admin = access is Access.ADMIN and bool(self.admin_keys)
        keys = self.admin_keys if admin else self.keys
        if not keys:
            return
        scheme, _, token = (req.get_header("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not _matches(token.strip().encode(), keys):
            kind = "an admin key" if admin else "an API key"
            raise falcon.HTTPUnauthorized(
                description=f"this route needs {kind}: send Authorization: Bearer <key>",
                challenges=["Bearer"],
            )


class ManagementOnModelPort:
    """Management routes answer on the model port only; elsewhere they do not exist."""

    def __init__(self, model_port: int) -> None:
        self.model_port = model_port

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params):
        if getattr(resource, "management", False) and request_port(req) != self.model_port:
            raise falcon.HTTPNotFound(
                description=f"there is no route {req.method} {req.path} on this port; model "
                f"management answers on port {self.model_port}"
            )
