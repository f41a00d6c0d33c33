"""The cohere SDK from PyPI, unchanged, against real ingrain-serve: /v1/rerank and /v2/rerank as
LangChain's CohereRerank calls them, checked against sentence-transformers' CrossEncoder."""

from __future__ import annotations

import numpy as np

from tests.conftest import RERANKER
from tests.unit.api.test_rerank import QUERY, TEXTS, pair_tokens


def test_cohere_sdk_reranks_through_v1_rerank(server, cross_encoder):
    """The cohere SDK from PyPI, pointed at this server, as LangChain's CohereRerank calls it."""
    import cohere

    client = cohere.Client(api_key="unused", base_url=server.url)
    answer = client.rerank(
        model=RERANKER, query=QUERY, documents=TEXTS, top_n=3, return_documents=True
    )
    expected = cross_encoder.predict([(QUERY, text) for text in TEXTS])
    assert [r.index for r in answer.results] == list(np.argsort(-expected, kind="stable")[:3])
    for result in answer.results:
        assert abs(result.relevance_score - expected[result.index]) <= 1e-4
        assert result.document.text == TEXTS[result.index]


def test_cohere_v2_client_reranks_through_v2_rerank(server, cross_encoder):
    """cohere.ClientV2, which langchain-cohere's CohereRerank uses."""
    import cohere

    client = cohere.ClientV2(api_key="unused", base_url=server.url)
    answer = client.rerank(model=RERANKER, query=QUERY, documents=TEXTS)
    expected = cross_encoder.predict([(QUERY, text) for text in TEXTS])
    assert [r.index for r in answer.results] == list(np.argsort(-expected, kind="stable"))
    assert all(abs(r.relevance_score - expected[r.index]) <= 1e-4 for r in answer.results)
    assert answer.meta.tokens.input_tokens == pair_tokens(cross_encoder, TEXTS)
