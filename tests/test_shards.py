"""Sharded collections answer exactly as one index does: global BM25 statistics, merged top-k, fusion.

The same documents (with the same vectors: a hashed bag of words, so dense scores mean something
without loading a model) go into a one-folder collection and a three-shard one, through the same
upserts, updates and deletes; every retrieval mode must then give the same hits with the same scores.
A control that scores each shard with its own statistics must not, which shows the global ones count.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from indexes.collection import Home, ShardedCollection
from indexes.documents import SourceDocument
from indexes.generations import current_generation
from indexes.shard_search import LocalFanout
from indexes.shards import shard_folder, shard_of
from rag.retriever import Retriever
from rag.schemas import RetrievalRequest
from tests.shard_helpers import ANALYZER, BagOfWordsRetriever, build, upsert

SHARDS = 3
QUERIES = ["what is the fahrenheit scale", "axon terminals synaptic knob definition",
           "causes of left ventricular hypertrophy", "temperature thermometer mercury",
           "how long does it take to become a doctor", "average salary of a nurse", "symptoms of flu"]


def _build(root, shards: int, documents: list[SourceDocument]):
    collection = build(root, shards, documents[:300])
    with collection.writer() as writer:  # a second generation that adds, updates and deletes
        for document in documents[300:]:
            upsert(writer, collection, document)
        for document in documents[10:15]:
            upsert(writer, collection, replace(document, text=document.text + " thermometer update"))
        for document in documents[40:47]:
            writer.delete(document.id)
        writer.commit()
    return Home(root).open("corpus")


@pytest.fixture(scope="module")
def documents(msmarco_records) -> list[SourceDocument]:
    return [SourceDocument(r["_id"], r["text"], r.get("title", ""), {"group": i % 3})
            for i, r in enumerate(msmarco_records[:450])]


@pytest.fixture(scope="module")
def pair(tmp_path_factory, documents):
    single = _build(tmp_path_factory.mktemp("single"), 1, documents)
    sharded = _build(tmp_path_factory.mktemp("sharded"), SHARDS, documents)
    return single, sharded


def _same_ranking(expected: list[tuple[str, float]], got: list[tuple[str, float]]) -> None:
    """Same scores to 1e-6 in order, and the same ids wherever a score is not tied at the cut-off."""
    assert len(got) == len(expected)
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-6)
    if expected:
        last = expected[-1][1]
        assert ({i for i, s in got if s > last + 1e-6} == {i for i, s in expected if s > last + 1e-6})
        for (id_a, score_a), (id_b, _) in zip(expected, got):
            ties = sum(abs(s - score_a) < 1e-6 for _, s in expected)
            assert id_a == id_b or ties > 1


def test_documents_spread_over_shards_and_each_lives_in_one(pair, documents):
    single, sharded = pair
    assert isinstance(sharded, ShardedCollection) and not isinstance(single, ShardedCollection)
    per_shard = [set() for _ in range(SHARDS)]
    for index, snapshot in enumerate(sharded.shard_snapshots(sharded.committed())):
        for segment, live in zip(snapshot.segments, snapshot.live):
            for entry in segment.documents():
                if live is None or live[entry.first_row]:
                    per_shard[index].add(entry.doc_id)
    assert all(len(ids) > 50 for ids in per_shard)  # a stable hash spreads ids roughly evenly
    assert sum(len(ids) for ids in per_shard) == len(set().union(*per_shard)) == len(documents) - 7
    for index, ids in enumerate(per_shard):
        assert all(shard_of(doc_id, SHARDS) == index for doc_id in ids)
    assert sharded.stats()["documents"] == single.stats()["documents"] == len(documents) - 7
    assert sharded.stats()["chunks"] == single.stats()["chunks"]
    assert sharded.stats()["shards"] == SHARDS


def test_global_statistics_equal_the_single_index(pair):
    single, sharded = pair
    config = single.config.bm25
    expected, got = single.snapshot().bm25_stats(config), sharded.snapshot().bm25_stats(config)
    assert got.documents == expected.documents
    assert got.total_length == pytest.approx(expected.total_length, rel=1e-12)
    for query in QUERIES:
        terms = ANALYZER.terms(query)
        np.testing.assert_allclose(sharded.snapshot().bm25_query(ANALYZER, config, query)[1],
                                   single.snapshot().bm25_query(ANALYZER, config, query)[1], rtol=1e-12)


@pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
@pytest.mark.parametrize("filters", [None, {"group": 1}])
def test_retrieval_equals_the_single_index(pair, mode, filters):
    single, sharded = (BagOfWordsRetriever(c) for c in pair)
    for query in QUERIES:
        request = RetrievalRequest(query=query, mode=mode, top_k=20, filters=filters)
        expected, got = single.search(request), sharded.search(request)
        assert expected.hits, query
        _same_ranking([((h.id, h.chunk), h.score) for h in expected.hits],
                      [((h.id, h.chunk), h.score) for h in got.hits])
        for want, have in zip(expected.hits, got.hits):
            if (want.id, want.chunk) == (have.id, have.chunk):
                assert want.text == have.text and want.metadata == have.metadata
                for name, rank in want.found_by.items():  # raw BM25 and inner-product scores, exact
                    assert have.found_by[name].score == pytest.approx(rank.score, abs=1e-6)
        if filters:
            assert all(h.metadata["group"] == 1 for h in got.hits)


def test_convex_fusion_settings_equal_the_single_index(pair):
    single, sharded = (BagOfWordsRetriever(c) for c in pair)
    for query in QUERIES[:4]:
        request = RetrievalRequest(query=query, mode="hybrid", top_k=10, adaptive=False, dense_weight=0.3)
        expected, got = single.search(request), sharded.search(request)
        _same_ranking([((h.id, h.chunk), h.score) for h in expected.hits],
                      [((h.id, h.chunk), h.score) for h in got.hits])
        assert got.weights == pytest.approx(expected.weights)


def _tie_free(retriever: Retriever, query: str, candidates: int) -> bool:
    """Whether both retrievers' first `candidates` (+1, the cut) have distinct scores: only then are
    ranks defined by scores alone (ties rank in storage order, which sharding changes, as merging does)."""
    snapshot, config = retriever.collection.snapshot(), retriever.collection.config
    terms, weights = snapshot.bm25_query(ANALYZER, config.bm25, query)
    for hits in (snapshot.bm25_top_k(config.bm25, terms, weights, candidates + 1),
                 snapshot.dense(retriever.embed_query(query), candidates + 1, config.dense.ef_search)):
        scores = np.round([h.score for h in hits], 6)
        if len(set(scores)) != len(scores):
            return False
    return True


def test_rank_fusion_equals_the_single_index_where_ranks_are_defined(pair):
    single, sharded = (BagOfWordsRetriever(c) for c in pair)
    compared = 0
    for query in QUERIES:
        if not _tie_free(single, query, 8):
            continue
        request = RetrievalRequest(query=query, mode="hybrid", top_k=8, candidates=8, fusion="rrf")
        expected, got = single.search(request), sharded.search(request)
        assert [(h.id, h.chunk) for h in got.hits] == [(h.id, h.chunk) for h in expected.hits]
        np.testing.assert_allclose([h.score for h in got.hits], [h.score for h in expected.hits], atol=1e-6)
        compared += 1
    assert compared >= 2


def test_per_shard_statistics_would_change_the_scores(pair):
    """The control: each shard scoring with its own N, average length and df gives other scores."""
    single, sharded = pair
    config = single.config.bm25
    differs = 0
    for query in QUERIES:
        expected = [h.score for h in single.snapshot().bm25(ANALYZER, config, query, 10)]
        local = sorted((h.score for snapshot in sharded.shard_snapshots(sharded.committed())
                        for h in snapshot.bm25(ANALYZER, config, query, 10)), reverse=True)[:10]
        exact = [h.score for h in sharded.snapshot().bm25(ANALYZER, config, query, 10)]
        np.testing.assert_allclose(exact, expected, atol=1e-6)
        if len(local) != len(expected) or np.max(np.abs(np.subtract(local, expected))) > 1e-3:
            differs += 1
    assert differs == len(QUERIES)


def test_a_failed_commit_publishes_nothing_and_is_rolled_back(pair, tmp_path, monkeypatch, documents):
    _, sharded = pair
    root = tmp_path / "home"
    shutil.copytree(sharded.folder.parent.parent, root)
    collection = Home(root).open("corpus")
    before = collection.snapshot().generation
    lost = SourceDocument("lost-doc", "zebra quagga okapi", "", {"group": 0})
    kept = SourceDocument("kept-doc", "zebra narwhal", "", {"group": 0})

    def crash(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr("indexes.sharded_writer.commit_sharded", crash)
    with pytest.raises(OSError), collection.writer() as writer:
        upsert(writer, collection, lost)
        writer.commit()
    shard = shard_folder(collection.folder, shard_of(lost.id, SHARDS))
    assert current_generation(shard) > collection.committed().shards[shard_of(lost.id, SHARDS)]  # shard moved
    reader = Home(root).open("corpus")
    assert reader.snapshot().generation == before
    hits = BagOfWordsRetriever(reader).search(RetrievalRequest(query="zebra", mode="bm25")).hits
    assert not hits
    monkeypatch.undo()
    with collection.writer() as writer:
        upsert(writer, collection, kept)
        writer.commit()
    hits = BagOfWordsRetriever(Home(root).open("corpus")).search(RetrievalRequest(query="zebra", mode="bm25")).hits
    assert [h.id for h in hits] == ["kept-doc"]
    with collection.writer() as writer:  # deletes reach the shard that holds the document
        assert writer.delete("kept-doc") and not writer.delete("lost-doc")
        writer.commit()
    assert not BagOfWordsRetriever(Home(root).open("corpus")).search(RetrievalRequest(query="zebra", mode="bm25")).hits


@pytest.mark.slow
def test_cli_builds_and_searches_a_sharded_collection(tmp_path, demo_home):
    from tests.conftest import DEMO_DOCS
    from tests.helpers import run_mighty

    home = tmp_path / "home"
    bad = run_mighty(home, "index", "add", str(DEMO_DOCS), "--collection", "docs", "--shards", "0")
    assert bad.returncode == 2 and "shards" in bad.stderr and "Traceback" not in bad.stderr
    added = run_mighty(home, "index", "add", str(DEMO_DOCS), "--collection", "docs", "--shards", "2")
    assert added.returncode == 0, added.stderr
    stats = json.loads(run_mighty(home, "index", "stats", "docs", "--json").stdout)
    expected = Home(demo_home).open("demo").stats()
    assert stats["shards"] == 2 and (stats["documents"], stats["chunks"]) == (expected["documents"], expected["chunks"])
    for folder in (shard_folder(home / "collections" / "docs", i) for i in range(2)):
        assert current_generation(folder)  # both shards hold documents
    # each retriever alone: the single demo index calibrates its hybrid weights at commit, while sharded
    # collections use the configured ones (hybrid equivalence at equal settings is tested above)
    for mode in ("bm25", "dense"):
        query = "reciprocal rank fusion constant k"
        found = run_mighty(home, "search", query, "--collection", "docs", "--mode", mode, "--json")
        single = Retriever(Home(demo_home).open("demo")).search(RetrievalRequest(query=query, mode=mode))
        hits = json.loads(found.stdout)["hits"]
        assert hits and [(h["id"], h["chunk"]) for h in hits] == [(h.id, h.chunk) for h in single.hits]
        np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in single.hits], atol=1e-5)


def test_a_refused_partial_result_is_a_503_with_the_reason():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from api import error_handlers
    from indexes.shard_search import ShardUnavailable

    app = FastAPI()
    error_handlers.install(app)

    @app.get("/search")
    def search():
        raise ShardUnavailable("shard(s) [1] did not answer; partial results are refused")

    response = TestClient(app).get("/search")
    assert response.status_code == 503 and "[1] did not answer" in response.json()["detail"]
    assert response.headers["retry-after"] == "5"


def test_hybrid_needs_two_round_trips_to_the_shards(pair, monkeypatch):
    """Both top-k lists with the cross scores fusion needs, in one trip; then the fetch. No scoring trips."""
    _, sharded = pair
    calls: list[str] = []
    original = LocalFanout.call

    def counting(self, method, per_shard):
        calls.append(method)
        return original(self, method, per_shard)

    monkeypatch.setattr(LocalFanout, "call", counting)
    result = BagOfWordsRetriever(sharded).search(RetrievalRequest(query=QUERIES[0], mode="hybrid", top_k=10))
    assert result.hits and calls == ["hybrid", "chunks"]
    assert result.shards.answered == list(range(SHARDS)) and not result.shards.partial
