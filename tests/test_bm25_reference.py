"""Our BM25 must agree with rank-bm25 (the reference) and stay exact across segments and deletes."""
from __future__ import annotations

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from indexes.analyzer import Analyzer
from indexes.config import BM25Config
from indexes.snapshot import Snapshot
from indexes.sparse import CollectionStats, SparseSegment, gather_stats, query_weights

QUERIES = ["what is the fahrenheit scale", "axon terminals synaptic knob definition",
           "causes of left ventricular hypertrophy", "temperature temperature thermometer mercury",
           "how long does it take to become a doctor"]


def _score_all(segments, config, query_terms):
    parts = [(seg, live) for seg, live in segments]
    stats = gather_stats(config, parts)
    unique = list(dict.fromkeys(query_terms))
    df = sum(seg.document_frequencies(unique, live) for seg, live in parts)
    unique, weights = query_weights(config, stats, query_terms, df)
    return stats, unique, weights


@pytest.fixture(scope="module")
def corpus(msmarco_records):
    analyzer = Analyzer(BM25Config())
    return [analyzer.terms(r["text"]) for r in msmarco_records[:400]], analyzer


@pytest.mark.parametrize("k1,b", [(1.5, 0.75), (1.2, 0.4), (0.9, 1.0)])
def test_scores_match_rank_bm25(corpus, k1, b):
    docs, analyzer = corpus
    config = BM25Config(k1=k1, b=b, idf="robertson", epsilon=0.25)
    reference = BM25Okapi(docs, k1=k1, b=b, epsilon=0.25)
    segment = SparseSegment.build(docs)
    for query in QUERIES:
        terms = analyzer.terms(query)
        expected = reference.get_scores(terms)
        stats, unique, weights = _score_all([(segment, None)], config, terms)
        all_rows = np.arange(len(docs))
        exact = segment.score_rows(unique, weights, all_rows, k1, b, stats.avgdl)
        np.testing.assert_allclose(exact, expected, atol=1e-6)
        rows, scores = segment.top_k(unique, weights, 10, k1, b, stats.avgdl, None)
        best = np.argsort(-expected, kind="mergesort")[:len(rows)]
        np.testing.assert_allclose(scores, expected[best], atol=1e-6)
        assert set(rows[scores > scores[-1] + 1e-9]) <= set(best)


def test_statistics_are_global_across_segments_and_deletes(corpus):
    docs, analyzer = corpus
    config = BM25Config(idf="robertson")
    deleted = {3, 17, 250, 399}
    live_docs = [d for i, d in enumerate(docs) if i not in deleted]
    reference = BM25Okapi(live_docs, k1=config.k1, b=config.b, epsilon=config.epsilon)
    first, second = SparseSegment.build(docs[:150]), SparseSegment.build(docs[150:])
    live_first = np.ones(150, dtype=np.uint8)
    live_second = np.ones(250, dtype=np.uint8)
    for i in deleted:
        (live_first if i < 150 else live_second)[i if i < 150 else i - 150] = 0
    parts = [(first, live_first), (second, live_second)]
    for query in QUERIES:
        terms = analyzer.terms(query)
        stats, unique, weights = _score_all(parts, config, terms)
        assert stats.documents == len(live_docs)
        got = np.concatenate([
            first.score_rows(unique, weights, np.flatnonzero(live_first), config.k1, config.b, stats.avgdl),
            second.score_rows(unique, weights, np.flatnonzero(live_second), config.k1, config.b, stats.avgdl)])
        np.testing.assert_allclose(got, reference.get_scores(terms), atol=1e-6)
        rows, _ = second.top_k(unique, weights, 400, config.k1, config.b, stats.avgdl, live_second)
        assert not set(rows.tolist()) & {i - 150 for i in deleted if i >= 150}


def test_lucene_idf_is_never_negative():
    config = BM25Config()
    stats = CollectionStats(documents=10, total_length=100.0)
    _, weights = query_weights(config, stats, ["common"], np.array([10]))
    assert weights[0] > 0


def test_segment_round_trips_without_pickle(tmp_path, corpus):
    docs, _ = corpus
    segment = SparseSegment.build(docs[:50])
    segment.save(tmp_path)
    loaded = SparseSegment.load(tmp_path)
    assert loaded.vocab == segment.vocab
    np.testing.assert_array_equal(loaded.indices, segment.indices)
    np.testing.assert_array_equal(loaded.tf, segment.tf)


def test_empty_snapshot_answers_nothing(tmp_path):
    from indexes.generations import Manifest

    snapshot = Snapshot(tmp_path, Manifest(0), [], {})
    assert snapshot.bm25(Analyzer(BM25Config()), BM25Config(), "anything", 5) == []
