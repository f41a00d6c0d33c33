"""The model-management routes the `ingrain` client calls on its "model server" URL.

Loading adds a model to the server's loaded set (building it first, in a separate process,
when it is not in the repository and the build extras are installed); unloading removes it;
every worker follows the set (runtime.registry).
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys

import falcon

from api import params
from api.resources import respond
from api.settings import ServerSettings
from runtime.loaded_set import LoadedSet, Models
from runtime.registry import ModelRegistry
from runtime.repository import ModelNotFound, Repository

log = logging.getLogger(__name__)

# Each library's import name is the library's name.
LIBRARIES = ("sentence_transformers", "open_clip", "timm")
BUILD_TIMEOUT_S = 3600


class _Management:
    def __init__(self, registry: ModelRegistry, loaded: LoadedSet, settings: ServerSettings):
        self.registry = registry
        self.repository: Repository = registry.repository
        self.loaded = loaded
        self.settings = settings

    def _name(self, req: falcon.Request) -> tuple[dict, str]:
        body = params.read_json_object(req, self.settings.limits)
        name = params.model_name(body, self.settings.limits)
        req.context.model = name
        return body, name


class LoadModel(_Management):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body, name = self._name(req)
        library = body.get("library")
        if library is not None and library not in LIBRARIES:
            raise falcon.HTTPBadRequest(
                description=f'"library" must be one of {", ".join(LIBRARIES)}, not {library!r}'
            )
        if name in self.loaded.read():
            respond(resp, {"message": f"Model {name} is already loaded."})
            return
        self._check_capacity(self.loaded.read())
        entry = self._entry_or_build(name, library)
        if library is not None and entry.manifest.library != library:
            raise falcon.HTTPBadRequest(
                description=f"model {name!r} in the repository is a {entry.manifest.library} "
                f"model, not {library}"
            )
        self.registry.load(name)  # here first, so a broken model fails this request

        def add(models: Models) -> Models:
            if name not in models:
                self._check_capacity(models)
            return {**models, name: entry.manifest.library}

        self.loaded.update(add)
        respond(resp, {"message": f"Model {name} loaded successfully."})

    def _check_capacity(self, models: Models) -> None:
        limit = self.settings.max_loaded_models
        if len(models) >= limit:
            raise falcon.HTTPBadRequest(
                description=f"Maximum number of loaded models ({limit}) reached. Loaded: "
                f"{', '.join(models)}. Unload one first with POST /unload_model "
                '{"name": "..."}, or start the server with a larger --max-loaded-models.'
            )

    def _entry_or_build(self, name: str, library: str | None):
        try:
            return self.repository.find(name)
        except ModelNotFound:
            pass
        command = f"ingrain-build {name}" + (f" --library {library}" if library else "")
        needed = ("torch", "onnx", *([library] if library else []))
        missing = [module for module in needed if importlib.util.find_spec(module) is None]
        if missing:
            raise falcon.HTTPBadRequest(
                description=f"model {name!r} is not in the engine repository and this server "
                f"cannot build it (no {', '.join(missing)}): run {command} "
                "or install ingrain-server[build]"
            )
        self._build(name, library, command)
        return self.repository.find(name)

    def _build(self, name: str, library: str | None, command: str) -> None:
        """Build in a child process: torch stays out of the worker, and a crash stays there too.
        Concurrent loads of one model build it once (the builder locks the entry)."""
        argv = [
            sys.executable,
            "-m",
            "cli",
            "build",
            name,
            "--skip-existing",
            "--engines",
            str(self.repository.root),
        ]
        if library:
            argv += ["--library", library]
        log.info("building %s: %s", name, command)
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise falcon.HTTPBadRequest(
                description=f"building {name!r} took longer than {BUILD_TIMEOUT_S} s; run {command}"
            ) from None
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise falcon.HTTPBadRequest(description=f"cannot build {name!r}: {reason}")


class _Unloading(_Management):
    def _unload(self, name: str) -> None:
        def remove(models: Models) -> Models:
            if name not in models:
                raise falcon.HTTPNotFound(description=f"model {name!r} is not loaded")
            return {key: value for key, value in models.items() if key != name}

        self.loaded.update(remove)
        self.registry.sync()


class UnloadModel(_Unloading):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        _, name = self._name(req)
        self._unload(name)
        respond(resp, {"message": f"Model {name} unloaded successfully."})


class DeleteModel(_Unloading):
    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        _, name = self._name(req)
        entry = self.repository.find(name)  # 404 when it is not there
        if name in self.loaded.read():
            self._unload(name)
        self.repository.remove(entry.name)
        respond(resp, {"message": f"Model {name} deleted successfully."})


class LoadedModels(_Management):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        models = self.loaded.read()
        respond(resp, {"models": [{"name": n, "library": lib} for n, lib in models.items()]})


class RepositoryModels(_Management):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        loaded = self.loaded.read()
        models = [
            {
                "name": entry.name,
                "library": entry.manifest.library,
                "state": "READY" if entry.name in loaded else "UNAVAILABLE",
            }
            for entry in self.repository.entries()
        ]
        respond(resp, {"models": models})
