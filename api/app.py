"""The Falcon WSGI app. Each gunicorn worker builds its own, after fork."""

from __future__ import annotations

import falcon

from api.auth import ApiKeys, ManagementOnModelPort
from api.errors import install_error_handlers
from api.middleware import Observability
from api.pages import add_page_routes
from api.routes.classify import ClassifyImage, ClassifyText
from api.routes.embed import Embed, EmbedImage, EmbedText
from api.routes.management import (
    DeleteModel,
    LoadedModels,
    LoadModel,
    RepositoryModels,
    UnloadModel,
)
from api.routes.metrics import Metrics
from api.routes.model_info import ModelInfo
from api.routes.openai_api import add_openai_routes
from api.routes.openapi import OpenAPI
from api.routes.probes import Health, ModelReady, Ready
from api.routes.rerank import CohereRerank, Rerank
from api.routes.tei import add_tei_routes
from api.services.on_demand import OnDemandBuilds
from api.services.readiness import Readiness
from api.services.remote_engines import RemoteEngines
from api.settings import ServerSettings
from runtime.registry import ModelRegistry
from runtime.repository import Repository
from runtime.repository.loaded_set import LoadedSet


def create_app(settings: ServerSettings) -> falcon.App:
    repository = Repository(settings.engines)
    loaded = LoadedSet(settings.loaded_set) if settings.loaded_set else None
    registry = ModelRegistry(repository, settings.runtime, loaded)
    readiness = Readiness(registry, settings.preload, settings.readiness)
    readiness.load_preloaded()
    if loaded is not None:
        registry.follow()
    middleware: list = [Observability(settings.json_logs)]
    if settings.cors_origins:
        middleware.append(falcon.CORSMiddleware(allow_origins=list(settings.cors_origins)))
    if settings.management_on_model_port_only and settings.model_port is not None:
        middleware.append(ManagementOnModelPort(settings.model_port))
    middleware.append(ApiKeys(settings.api_keys, settings.admin_keys))
    app = falcon.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    install_error_handlers(app)
    app.add_route("/health", Health(settings.model_port))
    app.add_route("/ready", Ready(readiness))
    app.add_route("/models/ready", ModelReady(readiness, settings.limits))
    app.add_route("/openapi.json", OpenAPI())
    tei = add_tei_routes(app, registry, settings)
    add_page_routes(app, tei.root)
    app.add_route("/embed_text", EmbedText(registry, settings.limits))
    app.add_route("/embed_image", EmbedImage(registry, settings.limits))
    embed = Embed(registry, settings.limits, tei.embed)
    app.add_route("/embed", embed, suffix="shared")  # the ingrain API's, or TEI's, by the body
    app.add_route("/infer", embed)
    app.add_route("/classify_image", ClassifyImage(registry, settings.limits))
    app.add_route("/rerank", Rerank(registry, settings.limits, tei.rerank))
    cohere_rerank = CohereRerank(registry, settings.limits)
    app.add_route("/v1/rerank", cohere_rerank)
    app.add_route("/v2/rerank", cohere_rerank)
    app.add_route("/classify_text", ClassifyText(registry, settings.limits))
    info = ModelInfo(repository, settings.limits, settings.runtime)
    app.add_route("/model_embedding_size", info, suffix="embedding_size")
    app.add_route("/model_classification_labels", info, suffix="labels")
    app.add_route("/model_info", info, suffix="info")
    add_openai_routes(app, registry, repository, settings.limits)
    if loaded is not None:
        add_management_routes(app, registry, loaded, settings)
    app.add_route("/metrics", Metrics(repository))
    app.add_route("/metrics/prometheus", Metrics(repository, always_prometheus=True))
    return app


def add_management_routes(
    app: falcon.App, registry: ModelRegistry, loaded: LoadedSet, settings: ServerSettings
) -> None:
    builds = OnDemandBuilds(registry.repository, loaded.path.parent / "builds", settings.builds)
    arguments = (registry, loaded, settings, builds)
    load = LoadModel(*arguments)
    if settings.remote is not None:
        load.remote = RemoteEngines(settings.remote, registry)
    app.add_route("/load_model", load)
    app.add_route("/unload_model", UnloadModel(*arguments))
    app.add_route("/delete_model", DeleteModel(*arguments))
    app.add_route("/loaded_models", LoadedModels(*arguments))
    app.add_route("/repository_models", RepositoryModels(*arguments))
