"""Retrieval modes, fusion, provenance, filters and the LangChain adapter on the demo corpus."""
from __future__ import annotations

import numpy as np
import pytest
from langchain_core.documents import Document

from indexes.collection import Home
from indexes.fusion import convex_combination, reciprocal_rank_fusion
from rag.langchain import MightyRetriever
from rag.retriever import Retriever
from rag.schemas import RetrievalRequest
from tests.conftest import DEMO_DOCS


@pytest.fixture(scope="module")
def retriever(demo_home):
    return Retriever(Home(demo_home).open("demo"))


@pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
def test_modes_find_the_right_document_with_citable_spans(retriever, mode):
    result = retriever.search(RetrievalRequest(query="reciprocal rank fusion constant k", mode=mode, top_k=5))
    assert result.hits[0].id == "docs/reciprocal-rank-fusion.md"
    assert all(0.0 <= h.score <= 1.0 for h in result.hits)
    assert [h.score for h in result.hits] == sorted((h.score for h in result.hits), reverse=True)
    for hit in result.hits:  # the span cuts the original file's text exactly
        text = (DEMO_DOCS / hit.id.removeprefix("docs/")).read_text(encoding="utf-8")
        assert text[hit.span[0]:hit.span[1]] == hit.text
    expected = {"bm25"} if mode == "bm25" else {"dense"} if mode == "dense" else {"bm25", "dense"}
    assert set(result.hits[0].found_by) == expected


def test_hybrid_reports_provenance_and_weights(retriever):
    result = retriever.search(RetrievalRequest(query="How are deletes handled in segments?", top_k=10))
    assert set(result.weights) == {"bm25", "dense"}
    assert abs(sum(result.weights.values()) - 1) < 1e-9
    for hit in result.hits:
        assert any(r.rank for r in hit.found_by.values())
        for name, rank in hit.found_by.items():
            assert rank.rank is None or rank.rank >= 1
    rrf = retriever.search(RetrievalRequest(query="How are deletes handled in segments?", fusion="rrf"))
    assert rrf.hits[0].score == 1.0


def test_dense_weight_extremes_reproduce_single_retrievers(retriever):
    query = "which file tells readers the committed generation"
    for weight, mode in ((1.0, "dense"), (0.0, "bm25")):
        fused = retriever.search(RetrievalRequest(query=query, dense_weight=weight, adaptive=False, top_k=5))
        single = retriever.search(RetrievalRequest(query=query, mode=mode, top_k=5))
        assert [(h.id, h.chunk) for h in fused.hits] == [(h.id, h.chunk) for h in single.hits]


def test_metadata_filters(retriever):
    only = retriever.search(RetrievalRequest(query="fusion", filters={"source": "docs/hybrid-fusion.md"}))
    assert {h.id for h in only.hits} == {"docs/hybrid-fusion.md"}
    allowed = {"docs/faq.md", "docs/glossary.md"}
    some = retriever.search(RetrievalRequest(query="fusion", filters={"source": {"in": sorted(allowed)}}, top_k=50))
    assert {h.id for h in some.hits} == allowed
    none = retriever.search(RetrievalRequest(query="fusion", filters={"type": "pdf"}))
    assert none.hits == []
    with pytest.raises(ValueError):
        retriever.search(RetrievalRequest(query="fusion", filters={"source": {"gt": 3}}))


def test_langchain_adapter_returns_documents(retriever):
    adapter = MightyRetriever(collection=retriever.collection, top_k=3)
    documents = adapter.invoke("How do I evaluate retrieval quality?")
    assert len(documents) == 3 and all(isinstance(d, Document) for d in documents)
    assert documents[0].metadata["id"].startswith("docs/")
    assert documents[0].page_content and "span" in documents[0].metadata


def test_fusion_functions():
    scores = {"bm25": np.array([10.0, 5.0, 0.0]), "dense": np.array([0.2, 0.9, 0.5])}
    fused, weights = convex_combination(scores, {"bm25": 0.5, "dense": 0.5}, adaptive=False)
    np.testing.assert_allclose(fused, [0.5, 0.5 * 0.5 + 0.5, 0.5 * 3 / 7])
    assert weights == {"bm25": 0.5, "dense": 0.5}
    rrf = reciprocal_rank_fusion({"a": np.array([1, 2, 0]), "b": np.array([2, 1, 3])}, k=60)
    assert rrf[0] == rrf[1] == 1.0 and rrf[2] < rrf[0]
