"""The task pipelines in-process (runtime.tasks), on real models: the staged and the one-call
runs agree, token ids mixed with texts keep their order, rankings and classes follow their
scores, and a model of another kind (or an impossible option) is refused before any work, with
the route to use added by the API (api.routes.task_errors)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from api.routes.task_errors import describe
from runtime.errors import DimensionsOutOfRange, InputError, UnknownPrompt, WrongModel
from runtime.models import Model
from runtime.repository import Repository
from runtime.tasks.capabilities import (
    IMAGE_CLASSIFICATION,
    IMAGE_EMBEDDING,
    RERANK,
    TEXT_CLASSIFICATION,
    TEXT_EMBEDDING,
    tasks_of,
)
from runtime.tasks.embedding import EmbeddingOptions
from runtime.tasks.image_classification import ImageClassification
from runtime.tasks.image_embedding import ImageEmbedding
from runtime.tasks.rerank import RerankOptions, rerank
from runtime.tasks.sparse_embedding import SparseEmbedding
from runtime.tasks.text_classification import TextClassificationOptions, classify_texts
from runtime.tasks.text_embedding import TextEmbedding, TextEmbeddingOptions, embed_texts
from runtime.text import TextOptions
from tests.conftest import CLIP, EXACT, MINILM, RERANKER, TEXT_CLASSIFIER, TIMM, ZERO_SHOT

TEXTS = ["a cat on a mat", "a dog in the park", "stock markets fell today"]


@pytest.fixture(scope="module")
def models(pair_engines) -> Iterator[dict[str, Model]]:
    repository = Repository(pair_engines)
    loaded = {
        name: Model.load(repository.find(name), EXACT)
        for name in (MINILM, CLIP, ZERO_SHOT, TIMM, RERANKER, TEXT_CLASSIFIER)
    }
    yield loaded
    for model in loaded.values():
        model.close()


def test_each_model_serves_the_tasks_of_its_kind(models):
    assert tasks_of(models[MINILM]) == (TEXT_EMBEDDING,)
    assert tasks_of(models[CLIP]) == (TEXT_EMBEDDING, IMAGE_EMBEDDING)
    assert tasks_of(models[ZERO_SHOT]) == (TEXT_EMBEDDING, IMAGE_EMBEDDING, IMAGE_CLASSIFICATION)
    assert tasks_of(models[TIMM]) == (IMAGE_CLASSIFICATION,)
    assert tasks_of(models[RERANKER]) == (RERANK,)
    assert tasks_of(models[TEXT_CLASSIFIER]) == (TEXT_CLASSIFICATION,)


def test_staged_text_embedding_equals_the_one_call(models):
    model = models[MINILM]
    options = TextEmbeddingOptions(normalize=False, n_dims=100)
    task = TextEmbedding(model, options)
    staged = task.run(task.prepare(TEXTS))
    whole = embed_texts(model, TEXTS, options)
    assert staged.shape == (3, 100) and np.array_equal(staged, whole)
    full = embed_texts(model, TEXTS, TextEmbeddingOptions(normalize=False))
    assert np.array_equal(whole, full[:, :100])  # truncation keeps the leading dimensions


def test_token_ids_mixed_with_texts_keep_their_places(models):
    model = models[MINILM]
    ids = model.text.rows([TEXTS[1]], TextOptions())[0].ids
    mixed = embed_texts(model, [TEXTS[0], ids, TEXTS[2]])
    texts = embed_texts(model, TEXTS)
    assert np.abs(mixed - texts).max() <= 1e-6


def test_output_precision_is_applied_in_the_pipeline(models):
    model = models[MINILM]
    floats = embed_texts(model, TEXTS)
    packed = embed_texts(model, TEXTS, TextEmbeddingOptions(precision="ubinary"))
    assert packed.dtype == np.uint8 and np.array_equal(packed, np.packbits(floats > 0, axis=-1))


def test_an_embedding_model_ranks_by_cosine_best_first(models):
    model = models[MINILM]
    ranking = rerank(model, "a kitten", TEXTS, RerankOptions(top_n=2))
    embeddings = embed_texts(model, ["a kitten", *TEXTS])
    assert np.abs(ranking.scores - embeddings[1:] @ embeddings[0]).max() <= 1e-6
    assert ranking.order == list(np.argsort(-ranking.scores, kind="stable")[:2])
    assert ranking.tokens == sum(
        len(r.ids) for r in model.text.rows(["a kitten", *TEXTS], TextOptions())
    )


def test_a_cross_encoder_scores_through_its_activation_unless_raw(models):
    model = models[RERANKER]
    raw = rerank(model, "a kitten", TEXTS, RerankOptions(raw_scores=True)).scores
    scores = rerank(model, "a kitten", TEXTS).scores
    assert np.allclose(scores, 1 / (1 + np.exp(-raw)), atol=1e-6)


def test_text_classes_are_sorted_and_cut_to_top_k(models):
    classes = classify_texts(models[TEXT_CLASSIFIER], TEXTS, TextClassificationOptions(top_k=2))
    assert np.allclose(classes.scores.sum(axis=1), 1.0, atol=1e-5)
    labels = models[TEXT_CLASSIFIER].classifier.labels
    for row, top in zip(classes.scores, classes.top, strict=True):
        best = np.argsort(-row, kind="stable")[:2]
        assert top == [(labels[i], pytest.approx(float(row[i]))) for i in best]


def classify(model: Model) -> object:
    return classify_texts(model, TEXTS)


def rank(model: Model) -> object:
    return rerank(model, "a query", TEXTS)


@pytest.mark.parametrize(
    ("name", "task", "says", "hint"),
    [
        (RERANKER, TextEmbedding, "a reranker (cross-encoder), not an embedding", "/rerank"),
        (TEXT_CLASSIFIER, TextEmbedding, "a text classifier, not an embedding", "/classify_text"),
        (TIMM, ImageEmbedding, "an image classifier, not an embedding", "/classify_image"),
        (MINILM, SparseEmbedding, "not a sparse embedding model", "/embed_text"),
        (MINILM, classify, "an embedding model, not a text classifier", "/embed_text"),
        (RERANKER, classify, "not a text classifier", "/rerank"),
        (TEXT_CLASSIFIER, rank, "a text classifier, not a reranker", "/classify_text"),
        (TIMM, rank, "an image classifier, not a reranker", "/classify_image"),
    ],
)
def test_a_model_of_another_kind_is_named_and_the_api_adds_the_route(
    models, name, task, says, hint
):
    with pytest.raises(WrongModel) as raised:
        task(models[name])
    message = str(raised.value)
    assert repr(name) in message and says in message and "/" not in message.replace(name, "")
    assert describe(raised.value) == f"{message}; use {hint}"


def test_impossible_options_fail_before_any_image_is_fetched(models):
    unreachable = ["http://127.0.0.1:9/never.png"]  # fetched, it would be a download error
    with pytest.raises(DimensionsOutOfRange) as raised:
        ImageEmbedding(models[CLIP], EmbeddingOptions(n_dims=10_000)).prepare(unreachable)
    assert describe(raised.value).startswith("nDims must be between 1 and")
    with pytest.raises(InputError, match="has no class labels"):
        ImageClassification(models[CLIP]).prepare(unreachable)
    with pytest.raises(InputError, match="calibrated"):
        ImageEmbedding(models[CLIP], EmbeddingOptions(precision="int8"))
    with pytest.raises(InputError, match="ranks texts, not images"):
        rerank(models[RERANKER], "q", images=unreachable)


def test_an_unknown_prompt_name_is_refused_and_the_api_says_where_prompts_are_listed(models):
    options = TextEmbeddingOptions(text=TextOptions(prompt_name="nope"))
    with pytest.raises(UnknownPrompt) as raised:
        embed_texts(models[MINILM], TEXTS, options)
    assert "(query)" in str(raised.value)  # the prompts it has
    assert "/" not in str(raised.value)
    assert describe(raised.value) == f"{raised.value}; GET /model_info lists them"
