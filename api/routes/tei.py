"""Text Embeddings Inference's HTTP API, so that clients built for TEI (huggingface_hub's
InferenceClient, LangChain's HuggingFaceEndpointEmbeddings, LlamaIndex, Haystack) work unchanged.

Routes: POST /embed, /embed_all, /embed_sparse, /rerank, /predict, /similarity, /tokenize,
/decode, / (the served model's own task, as TEI routes it) and /vertex (Vertex AI's shape),
GET /info. /embed and /rerank are shared with the ingrain API, whose routes there hand TEI
bodies on (`speaks_tei`); POST / is shared with the playground's GET / (api.pages.Home).
Requests name no model: api.routes.tei_models chooses it. Errors come out in TEI's shape and
statuses (api.routes.tei_errors).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import falcon
import msgspec
import numpy as np
from tokenizers import Tokenizer

from api.routes import params
from api.routes.common import respond
from api.routes.tei_errors import (
    TEI_PATHS,
    TEIError,
    batch_too_large,
    error_type,
    runtime_errors,
)
from api.routes.tei_kinds import CLASSIFIER, EMBEDDING, RERANK, SPARSE
from api.routes.tei_models import ServedModels
from api.routes.tei_types import (
    ShapeError,
    TEIDecodeRequest,
    TEIEmbedAllRequest,
    TEIEmbedRequest,
    TEIEmbedSparseRequest,
    TEIPredictRequest,
    TEIRerankRequest,
    TEISimilarityParameters,
    TEISimilarityRequest,
    TEITokenizeRequest,
    TEIVertexRequest,
    as_id_rows,
    as_rows,
    as_sequences,
)
from api.settings import Limits, ServerSettings
from runtime.models import Model
from runtime.registry import ModelRegistry
from runtime.tasks.rerank import RerankOptions, rerank
from runtime.tasks.sparse_embedding import SparseEmbeddingOptions, embed_sparse
from runtime.tasks.text_classification import TextClassification, TextClassificationOptions
from runtime.tasks.text_embedding import TextEmbeddingOptions, embed_texts, similarities
from runtime.tasks.text_inputs import tokens_read
from runtime.tasks.token_embeddings import TokenEmbeddings
from runtime.text import TextOptions

Request = TypeVar("Request", bound=msgspec.Struct)
Shaped = TypeVar("Shaped")
Inputs = TypeVar("Inputs", bound=TEIEmbedAllRequest)  # a body of `inputs` and text options


class _Route:
    def __init__(self, registry: ModelRegistry, limits: Limits, models: ServedModels) -> None:
        self.registry = registry
        self.limits = limits
        self.models = models

    def _body(self, req: falcon.Request, kind: type[Request]) -> Request:
        req.context.tei = True
        body = params.read_json_object(req, self.limits)
        try:
            return msgspec.convert(body, kind)
        except msgspec.ValidationError as error:
            raise TEIError("Validation", f"Failed to deserialize the JSON body: {error}") from None

    def _check_count(self, count: int, limit: int, what: str = "inputs") -> None:
        if count == 0:
            raise TEIError("Empty", f"`{what}` cannot be empty")
        if count > limit:
            raise batch_too_large(count, limit)

    def _check_chars(self, texts: list[str]) -> None:
        for text in texts:
            if len(text) > self.limits.max_text_chars:
                raise TEIError(
                    "Validation",
                    f"`inputs` must have less than {self.limits.max_text_chars} characters. "
                    f"Given: {len(text)}",
                )

    def _inputs(
        self, req: falcon.Request, kind: type[Inputs], model_kind: str, route: str
    ) -> tuple[Inputs, list[str | list[int]], TextOptions, str]:
        """A body of `inputs` (texts and token-id rows): the request, its items and text
        options, and the model of `model_kind` that serves `route`."""
        request = self._body(req, kind)
        items, _ = _shaped(as_rows, request.inputs)
        self._check_count(len(items), self.limits.max_items)
        self._check_chars([item for item in items if isinstance(item, str)])
        options = _options(request.truncate, request.truncation_direction, request.prompt_name)
        name = self.models.pick((model_kind,), route)
        req.context.model, req.context.items = name, len(items)
        return request, items, options, name


def _shaped(shape: Callable[[Any], Shaped], value: Any) -> Shaped:
    """`value` narrowed by one of api.routes.tei_types' shape functions, or TEI's 422."""
    try:
        return shape(value)
    except ShapeError as error:
        raise TEIError("Validation", str(error)) from None


def _options(truncate: bool | None, direction: str, prompt_name: str | None) -> TextOptions:
    return TextOptions(
        truncate=True if truncate is None else truncate,
        direction=direction.lower(),
        prompt_name=prompt_name,
    )


class Embed(_Route):
    """POST /embed: one pooled embedding per input, as a list of lists."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request, items, text, name = self._inputs(req, TEIEmbedRequest, EMBEDDING, "/embed")
        options = TextEmbeddingOptions(request.normalize, request.dimensions, text=text)
        with runtime_errors(), self.registry.use(name) as model:
            embeddings = embed_texts(model, items, options)
        respond(resp, embeddings)


class EmbedSparse(_Route):
    """POST /embed_sparse: each input's non-zero vocabulary entries as [{index, value}]."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request, items, text, name = self._inputs(
            req, TEIEmbedSparseRequest, SPARSE, "/embed_sparse"
        )
        self._check_chars([item for item in items if isinstance(item, str)])
        with runtime_errors(), self.registry.use(name) as model:
            options = SparseEmbeddingOptions(request.top_k, text, request.task)
            vectors = embed_sparse(model, items, options)
        respond(
            resp,
            [
                [
                    {"index": index, "value": value}
                    for index, value in zip(v.indices.tolist(), v.values.tolist(), strict=True)
                ]
                for v in vectors
            ],
        )


class EmbedAll(_Route):
    """POST /embed_all: each input's token embeddings (before pooling), as a list per input of
    one embedding per token; for models built with --token-embeddings."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        _, items, options, name = self._inputs(req, TEIEmbedAllRequest, EMBEDDING, "/embed_all")
        limit = self.registry.runtime.batching.max_tokens
        with runtime_errors(), self.registry.use(name) as model:
            task = TokenEmbeddings(model, options)
            rows = task.prepare(items)
            tokens = tokens_read(rows)
            if tokens > limit:  # the answer holds a vector per token: bound its size
                raise TEIError(
                    "Validation",
                    f"the inputs hold {tokens} tokens; /embed_all answers at most {limit} per "
                    "request (--max-batch-tokens): send fewer or shorter inputs",
                    status=413,
                )
            embeddings = task.run(rows)
        respond(resp, embeddings)


class Similarity(_Route):
    """POST /similarity (and POST / with `inputs.source_sentence`): the cosine similarity of
    `source_sentence` with each of `sentences`."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = self._body(req, TEISimilarityRequest)
        sentences = request.inputs.sentences
        if not sentences:
            raise TEIError("Empty", "`inputs.sentences` cannot be empty")
        self._check_count(len(sentences) + 1, self.limits.max_items)
        texts = [request.inputs.source_sentence, *sentences]
        parameters = request.parameters or TEISimilarityParameters()
        options = _options(
            parameters.truncate, parameters.truncation_direction, parameters.prompt_name
        )
        name = self.models.pick((EMBEDDING,), "/similarity")
        req.context.model, req.context.items = name, len(texts)
        self._check_chars(texts)
        with runtime_errors(), self.registry.use(name) as model:
            cosines = similarities(model, request.inputs.source_sentence, sentences, options)
        respond(resp, cosines)


class Rerank(_Route):
    """POST /rerank: each text's score against the query, highest first."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = self._body(req, TEIRerankRequest)
        self._check_count(len(request.texts), self.limits.max_documents, "texts")
        self._check_chars([request.query, *request.texts])
        total = len(request.query) + sum(map(len, request.texts))
        if total > self.limits.max_rerank_chars:
            raise TEIError(  # too large, as TEI answers a body over its limit: 413
                "Validation",
                f"the query and texts hold {total} characters; the limit is "
                f"{self.limits.max_rerank_chars} per request (--max-rerank-chars), so send fewer "
                "or shorter texts",
                status=413,
            )
        name = self.models.pick((RERANK,), "/rerank")
        req.context.model, req.context.items = name, len(request.texts)
        options = RerankOptions(
            raw_scores=request.raw_scores,
            truncate=True if request.truncate is None else request.truncate,
            direction=request.truncation_direction,
        )
        with runtime_errors(), self.registry.use(name) as model:
            ranking = rerank(model, request.query, request.texts, options)
        ranks = []
        for index in ranking.order:
            rank: dict[str, Any] = {"index": index, "score": float(ranking.scores[index])}
            if request.return_text:
                rank["text"] = request.texts[index]
            ranks.append(rank)
        respond(resp, ranks)


class Predict(_Route):
    """POST /predict: every label's score per text or text pair, highest first."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = self._body(req, TEIPredictRequest)
        sequences, batch = _shaped(as_sequences, request.inputs)
        self._check_count(len(sequences), self.limits.max_items)
        self._check_chars([text for sequence in sequences for text in sequence])
        name = self.models.pick((CLASSIFIER, RERANK), "/predict")
        req.context.model, req.context.items = name, len(sequences)
        options = TextClassificationOptions(
            raw_scores=request.raw_scores,
            truncate=True if request.truncate is None else request.truncate,
            direction=request.truncation_direction,
        )
        with runtime_errors(), self.registry.use(name) as model:
            classes = TextClassification(model, options, rerankers=True).run(sequences)
        predictions = [
            [{"score": score, "label": label} for label, score in row] for row in classes.top
        ]
        respond(resp, predictions if batch else predictions[0])


class _TokenizerRoute(_Route):
    """The served model's tokenizer as its `tokenizers` file defines it, loaded once per build
    of the model (TEI's /tokenize and /decode show the tokenizer, not the model's inputs)."""

    def __init__(self, registry: ModelRegistry, limits: Limits, models: ServedModels) -> None:
        super().__init__(registry, limits, models)
        self._tokenizers: dict[tuple, Tokenizer] = {}
        self._lock = threading.Lock()

    def _tokenizer(self, model: Model) -> Tokenizer:
        key = (model.name, model.identity)
        with self._lock:
            tokenizer = self._tokenizers.get(key)
            if tokenizer is None:
                spec = model.manifest.tokenizer
                assert spec is not None and model.directory is not None
                tokenizer = Tokenizer.from_file(str(Path(model.directory) / spec.file))
                tokenizer.no_truncation()
                tokenizer.no_padding()
                self._tokenizers = {key: tokenizer}  # only the serving build is kept
        return tokenizer


class Tokenize(_TokenizerRoute):
    """POST /tokenize: the tokens of each input, with byte offsets into it (as TEI gives)."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = self._body(req, TEITokenizeRequest)
        texts = [request.inputs] if isinstance(request.inputs, str) else request.inputs
        self._check_count(len(texts), self.limits.max_items)
        self._check_chars(texts)
        name, _ = self.models.primary("/tokenize")
        req.context.model, req.context.items = name, len(texts)
        with runtime_errors(), self.registry.use(name) as model:
            if request.prompt_name is not None:
                if model.text is None:
                    raise TEIError("Validation", f"model {name!r} has no prompts")
                prompt = model.text.resolve_prompt(TextOptions(prompt_name=request.prompt_name))
                texts = [(prompt or "") + text for text in texts]
            tokenizer = self._tokenizer(model)
            assert model.manifest.tokenizer is not None  # as _tokenizer has checked
            limit = self.limits.max_items * model.manifest.tokenizer.max_length
        encodings = _encode_within(tokenizer, texts, request.add_special_tokens, limit)
        respond(resp, [_tokens(text, e) for text, e in zip(texts, encodings, strict=True)])


def _encode_within(
    tokenizer: Tokenizer, texts: list[str], add_special_tokens: bool, limit: int
) -> list[Any]:
    """Each text's encoding, stopping at the text that takes the total past `limit` tokens (the
    answer holds an object per token: both its size and the work are bounded)."""
    encodings, tokens = [], 0
    for text in texts:
        encodings.append(tokenizer.encode(text, add_special_tokens=add_special_tokens))
        tokens += len(encodings[-1].ids)
        if tokens > limit:
            raise TEIError(
                "Validation",
                f"the inputs hold more than {limit} tokens; /tokenize answers at most {limit} per "
                "request (--max-items times the model's maximum input length, the most /embed "
                "reads): send fewer or shorter inputs",
                status=413,
            )
    return encodings


def _tokens(text: str, encoding: Any) -> list[dict[str, Any]]:
    """TEI's TEISimpleToken list: special tokens by name, others by their bytes of `text`."""
    data = text.encode("utf-8")
    byte_at = np.concatenate([[0], np.cumsum([len(c.encode("utf-8")) for c in text])]).tolist()
    tokens = []
    for token_id, token, (start, stop), special in zip(
        encoding.ids, encoding.tokens, encoding.offsets, encoding.special_tokens_mask, strict=True
    ):
        if special:
            tokens.append(
                {"id": token_id, "text": token, "special": True, "start": None, "stop": None}
            )
            continue
        first, last = byte_at[start], byte_at[stop]
        piece = data[first:last].decode("utf-8", errors="replace")
        tokens.append(
            {"id": token_id, "text": piece, "special": False, "start": first, "stop": last}
        )
    return tokens


class Decode(_TokenizerRoute):
    """POST /decode: token ids back to text."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = self._body(req, TEIDecodeRequest)
        rows, batch = _shaped(as_id_rows, request.ids)
        if batch:
            self._check_count(len(rows), self.limits.max_items, "ids")
        name, _ = self.models.primary("/decode")
        req.context.model, req.context.items = name, len(rows)
        with runtime_errors(), self.registry.use(name) as model:
            tokenizer = self._tokenizer(model)
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        for index, row in enumerate(rows):
            bad = next((i for i in row if i >= size), None)
            if bad is not None:
                raise TEIError(
                    "Validation",
                    f"`ids[{index}]` holds token id {bad}, outside the vocabulary "
                    f"(0 to {size - 1})",
                )
        respond(resp, tokenizer.decode_batch(rows, skip_special_tokens=request.skip_special_tokens))


class Info:
    """GET /info: the served model and the server's limits, in TEI's Info shape."""

    def __init__(self, registry: ModelRegistry, settings: ServerSettings, models: ServedModels):
        self.registry = registry
        self.settings = settings
        self.models = models

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.tei = True
        name, kind = self.models.primary("/info")
        manifest = self.registry.repository.find(name).manifest
        if kind in (EMBEDDING, SPARSE):
            pooling = "splade" if kind == SPARSE else manifest.build.get("pooling", "unknown")
            model_type: dict[str, Any] = {"embedding": {"pooling": pooling}}
        else:
            with runtime_errors(), self.registry.use(name) as model:
                assert model.classifier is not None
                labels = model.classifier.labels
            classifier = {
                "id2label": {str(i): label for i, label in enumerate(labels)},
                "label2id": {label: i for i, label in enumerate(labels)},
            }
            model_type = {"reranker" if kind == RERANK else "classifier": classifier}
        limits, batching = self.settings.limits, self.settings.runtime.batching
        respond(
            resp,
            {
                "model_id": name,
                "model_sha": None,
                "model_dtype": "float32",
                "served_model_name": name,
                "model_type": model_type,
                "max_concurrent_requests": limits.max_connections,
                "max_input_length": manifest.tokenizer.max_length if manifest.tokenizer else 0,
                "max_batch_tokens": batching.max_tokens,
                "max_batch_requests": None,
                "max_client_batch_size": limits.max_items,
                "auto_truncate": True,
                "tokenization_workers": 1,
                "version": metadata.version("ingrain-server"),
                "sha": None,
                "docker_label": None,
            },
        )


# The route an instance of /vertex that is not a rerank body goes to, by the served model's
# kind (TEI's vertex_compatibility: classifiers and rerankers predict).
VERTEX_ROUTES = {EMBEDDING: EMBEDDING, SPARSE: SPARSE, RERANK: CLASSIFIER, CLASSIFIER: CLASSIFIER}


class Vertex(_Route):
    """POST /vertex: Vertex AI's shape, `{"instances": [...]}` answered `{"predictions":
    [...]}`. As in TEI, an instance that is a rerank body goes to /rerank, any other to the
    served model's own route; each answers as that route does, in order, and the first instance
    that fails fails the request (its error names the instance). The instances together hold at
    most --max-items inputs (rerank texts: --max-documents), as one request to their route."""

    def __init__(
        self,
        registry: ModelRegistry,
        limits: Limits,
        models: ServedModels,
        routes: dict[str, Any],
    ) -> None:
        super().__init__(registry, limits, models)
        self.routes = routes

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = self._body(req, TEIVertexRequest)
        plan = [self._route(index, instance) for index, instance in enumerate(request.instances)]
        documents = sum(size for route, size in plan if route == RERANK)
        inputs = sum(size for route, size in plan if route != RERANK)
        if documents > self.limits.max_documents:
            raise batch_too_large(documents, self.limits.max_documents)
        if inputs > self.limits.max_items:
            raise batch_too_large(inputs, self.limits.max_items)
        predictions = []
        for index, (instance, (route, _)) in enumerate(zip(request.instances, plan, strict=True)):
            req.context.json_body = instance  # what the route reads as its body
            answer = falcon.Response()
            try:
                self.routes[route].on_post(req, answer)
            except falcon.HTTPError as error:
                raise TEIError(
                    error_type(error),
                    f"`instances[{index}]`: {error.description or error.title}",
                    status=error.status_code,
                    headers=error.headers,
                ) from None
            predictions.append(msgspec.Raw(answer.data))
        req.context.items = inputs + documents
        respond(resp, {"predictions": predictions})

    def _route(self, index: int, instance: Any) -> tuple[str, int]:
        """The route of one instance and its inputs as that route counts them (1 for a body
        the route will refuse, saying why)."""
        if not isinstance(instance, dict):
            raise TEIError(
                "Validation",
                f"`instances[{index}]` is not a JSON object: each instance is a body of /embed, "
                "/embed_sparse, /predict or /rerank",
            )
        try:
            rerank = msgspec.convert(instance, TEIRerankRequest)
            return RERANK, len(rerank.texts)
        except msgspec.ValidationError:
            pass
        route = VERTEX_ROUTES[self.models.primary("/vertex")[1]]
        try:
            if route == CLASSIFIER:
                inputs = msgspec.convert(instance, TEIPredictRequest).inputs
                return route, len(as_sequences(inputs)[0])
            return route, len(as_rows(msgspec.convert(instance, TEIEmbedAllRequest).inputs)[0])
        except (msgspec.ValidationError, ShapeError):
            return route, 1


class TEIRoutes(NamedTuple):
    """TEI's routes on paths it shares with the ingrain API (/embed, /rerank) and the pages (/)."""

    embed: Embed
    rerank: Rerank
    root: Root


class Root:
    """POST /: the served model's own task, as TEI routes it: embed (or similarity, for a
    sentence-similarity body), embed_sparse, rerank or predict."""

    def __init__(self, routes: dict[str, Any], models: ServedModels, limits: Limits) -> None:
        self.routes = routes
        self.models = models
        self.limits = limits

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.tei = True
        body = params.read_json_object(req, self.limits)
        if isinstance(body.get("inputs"), dict):
            route = "similarity"
        elif "query" in body and "texts" in body:
            route = RERANK
        else:
            route = self.models.primary("/")[1]
        self.routes[route].on_post(req, resp)


def add_tei_routes(app: falcon.App, registry: ModelRegistry, settings: ServerSettings) -> TEIRoutes:
    """TEI's routes of their own; those on paths the ingrain API and the pages have too (POST
    /embed, /rerank and /) are returned for their resources there to answer TEI bodies with."""
    limits = settings.limits
    models = ServedModels(registry, settings.default_models)
    arguments = (registry, limits, models)
    routes = {
        EMBEDDING: Embed(*arguments),
        SPARSE: EmbedSparse(*arguments),
        RERANK: Rerank(*arguments),
        CLASSIFIER: Predict(*arguments),
        "similarity": Similarity(*arguments),
    }
    own = {
        "/embed_sparse": routes[SPARSE],
        "/embed_all": EmbedAll(*arguments),
        "/predict": routes[CLASSIFIER],
        "/similarity": routes["similarity"],
        "/tokenize": Tokenize(*arguments),
        "/decode": Decode(*arguments),
        "/info": Info(registry, settings, models),
        "/vertex": Vertex(*arguments, routes),
    }
    for path in TEI_PATHS:  # the paths whose every error is in TEI's shape (tei_errors)
        app.add_route(path, own[path])
    return TEIRoutes(routes[EMBEDDING], routes[RERANK], Root(routes, models, limits))
