"""The Falcon WSGI app. Each gunicorn worker builds its own, after fork."""

from __future__ import annotations

import falcon

from api.errors import install_error_handlers
from api.metrics import Metrics
from api.middleware import Observability
from api.resources import ClassifyImage, Embed, EmbedImage, EmbedText, Health, ModelInfo
from api.settings import ServerSettings
from runtime.registry import ModelRegistry
from runtime.repository import Repository

INFERENCE_HEALTH = "The inference server is running."


def create_app(settings: ServerSettings) -> falcon.App:
    repository = Repository(settings.engines)
    registry = ModelRegistry(
        repository,
        settings.backend,
        settings.threads,
        settings.fetch,
        settings.limits.max_image_pixels,
    )
    for name in settings.preload:
        registry.get(name)
    app = falcon.App(middleware=[Observability(settings.json_logs)])
    app.req_options.strip_url_path_trailing_slash = True
    install_error_handlers(app)
    app.add_route("/health", Health(INFERENCE_HEALTH))
    app.add_route("/embed_text", EmbedText(registry, settings.limits))
    app.add_route("/embed_image", EmbedImage(registry, settings.limits))
    embed = Embed(registry, settings.limits)
    app.add_route("/embed", embed)
    app.add_route("/infer", embed)
    app.add_route("/classify_image", ClassifyImage(registry, settings.limits))
    info = ModelInfo(repository, settings.limits)
    app.add_route("/model_embedding_size", info, suffix="embedding_size")
    app.add_route("/model_classification_labels", info, suffix="labels")
    app.add_route("/metrics", Metrics(repository))
    app.add_route("/metrics/prometheus", Metrics(repository, always_prometheus=True))
    return app
