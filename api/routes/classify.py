"""POST /classify_image and /classify_text: ingrain's classification routes."""

from __future__ import annotations

import time

import falcon

from api.routes import params, schemas
from api.routes.common import ModelRoute, elapsed_ms, respond
from runtime.tasks.image_classification import classify_images
from runtime.tasks.text_classification import TextClassificationOptions, classify_texts


class ClassifyImage(ModelRoute):
    """Class probabilities per image (timm classifiers, CLIP zero-shot)."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        request = self._request(req, schemas.ClassifyImageRequest)
        sources, headers = params.request_images(req, request, self.limits)
        with self.registry.use(request.name) as model:
            probabilities = classify_images(model, sources, headers)
        respond(resp, schemas.Probabilities(probabilities, elapsed_ms(started)))


class ClassifyText(ModelRoute):
    """Class probabilities per text, and the top_k labels by probability."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        request = self._request(req, schemas.ClassifyTextRequest)
        texts = params.check_texts("text", request.text, self.limits.max_items, self.limits)
        req.context.items = len(texts)
        with self.registry.use(request.name) as model:
            classes = classify_texts(model, texts, TextClassificationOptions(request.top_k))
        top = [[schemas.Label(label, score) for label, score in row] for row in classes.top]
        respond(resp, schemas.TextClasses(classes.scores, top, elapsed_ms(started)))
