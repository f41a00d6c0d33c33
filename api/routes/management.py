"""The model-management routes the `ingrain` client calls on its "model server" URL.

Loading adds a model to the server's loaded set (building it first, in a separate process,
when it is not in the repository and the build extras are installed); unloading removes it;
every worker follows the set (runtime.registry).
"""

from __future__ import annotations

import logging
from typing import TypeVar

import falcon

from api.auth import Access
from api.routes import params, schemas
from api.routes.common import respond
from api.services.on_demand import OnDemandBuilds
from api.services.remote_engines import RemoteEngines
from api.settings import ServerSettings
from runtime.errors import ModelNotFound
from runtime.registry import ModelRegistry
from runtime.repository import Entry, Repository
from runtime.repository.loaded_set import LoadedSet, Models

log = logging.getLogger(__name__)
T = TypeVar("T", schemas.ModelRequest, schemas.LoadModelRequest)


class _Management:
    management = True

    def __init__(
        self,
        registry: ModelRegistry,
        loaded: LoadedSet,
        settings: ServerSettings,
        builds: OnDemandBuilds,
    ) -> None:
        self.registry = registry
        self.repository: Repository = registry.repository
        self.loaded = loaded
        self.settings = settings
        self.builds = builds

    def _name(self, req: falcon.Request) -> str:
        return self._decode(req, schemas.ModelRequest).name

    def _decode(self, req: falcon.Request, kind: type[T]) -> T:
        request = params.decode(req, kind, self.settings.limits)
        req.context.model = params.check_name(request.name, self.settings.limits)
        return request


class LoadModel(_Management):
    access = Access.ADMIN
    remote: RemoteEngines | None = None  # set when the server serves an s3:// repository

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = self._decode(req, schemas.LoadModelRequest)
        name, library = request.name, request.library
        loaded = self.loaded.read()
        if name not in loaded:
            self._check_capacity(loaded)
        entry = self._entry_or_build(name, library)
        if library is not None and entry.manifest.library != library:
            raise falcon.HTTPBadRequest(
                description=f"model {name!r} in the repository is a {entry.manifest.library} "
                f"model, not {library}"
            )
        added = False

        def add(models: Models) -> Models:
            # Under the set's lock: loads, unloads and deletes on this server take turns.
            nonlocal added
            if name in models:
                return models
            self._check_capacity(models)
            self.registry.load(name)  # here first, so a broken model fails this request
            added = True
            return {**models, name: entry.manifest.library}

        self.loaded.update(add)
        message = "loaded successfully" if added else "is already loaded"
        respond(resp, schemas.Message(f"Model {name} {message}."))

    def _check_capacity(self, models: Models) -> None:
        limit = self.settings.max_loaded_models
        if len(models) >= limit:
            raise falcon.HTTPBadRequest(
                description=f"Maximum number of loaded models ({limit}) reached. Loaded: "
                f"{', '.join(models)}. Unload one first with POST /unload_model "
                '{"name": "..."}, or start the server with a larger --max-loaded-models.'
            )

    def _entry_or_build(self, name: str, library: str | None) -> Entry:
        if self.remote is not None:
            self.remote.sync(name)
        try:
            return self.repository.find(name)
        except ModelNotFound:
            pass
        self.builds.build(name, library)
        return self.repository.find(name)


def _without(models: Models, name: str) -> Models:
    return {key: value for key, value in models.items() if key != name}


class UnloadModel(_Management):
    access = Access.ADMIN

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        name = self._name(req)

        def remove(models: Models) -> Models:
            if name not in models:
                raise falcon.HTTPNotFound(description=f"model {name!r} is not loaded")
            return _without(models, name)

        self.loaded.update(remove)
        self.registry.sync()
        respond(resp, schemas.Message(f"Model {name} unloaded successfully."))


class DeleteModel(_Management):
    access = Access.ADMIN

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        name = self._name(req)

        def remove(models: Models) -> Models:
            # Under the set's lock, so a concurrent load or delete of it waits its turn;
            # ModelNotFound (a 404) when it is not there (any more).
            self.repository.remove(name)
            return _without(models, name)

        self.loaded.update(remove)
        self.registry.sync()
        respond(resp, schemas.Message(f"Model {name} deleted successfully."))


class LoadedModels(_Management):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        models = self.loaded.read()
        loaded = [schemas.LoadedModel(name, library) for name, library in models.items()]
        respond(resp, schemas.LoadedModels(loaded))


class RepositoryModels(_Management):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        loaded = self.loaded.read()
        models = [
            schemas.RepositoryModel(
                entry.name,
                entry.manifest.library,
                "READY" if entry.name in loaded else "UNAVAILABLE",
            )
            for entry in self.repository.entries()
        ]
        respond(resp, schemas.RepositoryModels(models))
