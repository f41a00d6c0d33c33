"""GET /model_embedding_size, /model_classification_labels and /model_info."""

from __future__ import annotations

import falcon

from api.routes import schemas
from api.routes.common import model_in_query, respond
from api.settings import Limits
from runtime.backends import engine_summary, int8_variant
from runtime.classifier import read_labels
from runtime.config import RuntimeConfig
from runtime.repository import Entry, Repository
from runtime.text import POOLING_MASK


class ModelInfo:
    """GET /model_embedding_size and /model_classification_labels: read from the manifest, so
    answering never loads the model."""

    def __init__(self, repository: Repository, limits: Limits, runtime: RuntimeConfig) -> None:
        self.repository = repository
        self.limits = limits
        self.runtime = runtime

    def _entry(self, req: falcon.Request) -> Entry:
        name = model_in_query(req, self.limits)
        return self.repository.find(name)

    def on_get_embedding_size(self, req: falcon.Request, resp: falcon.Response) -> None:
        manifest = self._entry(req).manifest
        if manifest.task != "embedding":
            raise falcon.HTTPBadRequest(
                description=f"model {manifest.name!r} is a {manifest.task} model; it has no "
                "(dense) embedding size"
            )
        tower = manifest.towers.get("text") or manifest.towers["image"]
        respond(resp, schemas.EmbeddingSize(tower.dim))

    def on_get_labels(self, req: falcon.Request, resp: falcon.Response) -> None:
        entry = self._entry(req)
        if entry.manifest.classifier is None:
            raise falcon.HTTPBadRequest(
                description=f"model {entry.name!r} has no class labels; build a CLIP model with "
                "ingrain-build SOURCE --labels FILE, or use a timm classifier"
            )
        respond(resp, schemas.Labels(read_labels(entry.directory, entry.manifest.classifier)))

    def on_get_info(self, req: falcon.Request, resp: falcon.Response) -> None:
        """What a client needs to call the model: towers, sizes, prompts, precisions."""
        entry = self._entry(req)
        manifest = entry.manifest
        text = manifest.towers.get("text")
        prompts = manifest.prompts
        towers = {
            key: schemas.TowerInfo(
                tower.dim,
                tower.quantization is not None,
                int8_variant(tower, self.runtime),
                engine_summary(tower, self.runtime, manifest.name, entry.directory),
            )
            for key, tower in manifest.towers.items()
        }
        info = schemas.ModelInfo(
            name=manifest.name,
            library=manifest.library,
            task=manifest.task,
            towers=towers,
            max_length=manifest.tokenizer.max_length if manifest.tokenizer else None,
            prompts=prompts.prompts if prompts else {},
            default_prompt_name=prompts.default if prompts else None,
            pooling_includes_prompt=text is None
            or POOLING_MASK not in [tensor.name for tensor in text.inputs],
        )
        respond(resp, info)
