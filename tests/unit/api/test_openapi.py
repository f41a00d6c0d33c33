"""The OpenAPI document is true to the app's routes and is served as it is."""

from __future__ import annotations

import re

import falcon

from api.app import create_app
from api.routes.openapi import DOCUMENT
from api.settings import ServerSettings


def app_routes(app: falcon.App) -> set[tuple[str, str]]:
    """(path, method) for every responder a resource implements, from Falcon's router."""
    found = set()
    nodes = list(app._router._roots)
    while nodes:
        node = nodes.pop()
        nodes.extend(node.children)
        if node.resource is None:
            continue
        for method, responder in node.method_map.items():
            if getattr(responder, "__self__", None) is node.resource:
                # {model:path} in Falcon is {model} in OpenAPI.
                template = re.sub(r"\{(\w+):\w+\}", r"{\1}", node.uri_template)
                found.add((template, method.lower()))
    return found


def test_every_route_is_described_and_every_description_is_a_route(tmp_path):
    app = create_app(ServerSettings(engines=tmp_path, loaded_set=tmp_path / "loaded.json"))
    described = {(path, method) for path, item in DOCUMENT["paths"].items() for method in item}
    assert app_routes(app) == described


def test_the_document_is_served(app):
    assert app.get("/openapi.json").json == app.get("/openapi.json").json == DOCUMENT
