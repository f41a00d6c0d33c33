"""Optional API keys: `Authorization: Bearer KEY` on every route but /health, /ready (and CORS
preflights); management routes may require an admin key instead. Keys are compared in
constant time, against every configured key, so timing reveals neither key nor position."""

from __future__ import annotations

import hmac

import falcon

# Probes (liveness, readiness) carry no key.
OPEN_ROUTES = ("/health", "/ready")
ADMIN_ROUTES = ("/load_model", "/unload_model", "/delete_model")


def _matches(token: bytes, keys: tuple[bytes, ...]) -> bool:
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token, key)
    return matched


class ApiKeys:
    def __init__(self, keys: tuple[str, ...], admin_keys: tuple[str, ...]) -> None:
        self.admin_keys = tuple(key.encode() for key in admin_keys)
        # Admin keys open every route; plain keys open all but the admin ones (when set).
        self.keys = tuple(key.encode() for key in keys) + self.admin_keys

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.method == "OPTIONS" or req.path in OPEN_ROUTES:
            return
        admin = self.admin_keys and req.path in ADMIN_ROUTES
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
