"""MaxScore-pruned BM25 top-k must equal exhaustive scoring: same scores, and every returned row's
score its exact BM25, on Zipfian text where pruning skips most postings of common terms."""
from __future__ import annotations

import numpy as np
import pytest

from indexes.sparse import SparseSegment
from indexes.sparse_top_k import exhaustive_top_k, pruned_top_k, scratch

K1, B = 1.2, 0.75


@pytest.fixture(scope="module")
def segment() -> SparseSegment:
    rng = np.random.default_rng(7)
    vocab = [f"w{i}" for i in range(400)]
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    docs = [[vocab[j] for j in rng.choice(len(vocab), size=int(rng.integers(5, 60)), p=p)] for _ in range(3000)]
    return SparseSegment.build(docs)


def _queries(rng: np.random.Generator, count: int) -> list[list[str]]:
    out = []
    for _ in range(count):  # a mix of common and rare terms, as real queries have
        terms = [f"w{int(rng.integers(0, 8))}" for _ in range(int(rng.integers(1, 4)))]
        terms += [f"w{int(rng.integers(8, 400))}" for _ in range(int(rng.integers(0, 3)))]
        out.append(list(dict.fromkeys(terms)) + (["absent"] if rng.random() < 0.1 else []))
    return out


@pytest.mark.parametrize("k", [1, 3, 10, 100])
@pytest.mark.parametrize("masked", [False, True])
def test_pruned_top_k_equals_exhaustive_scoring(segment, k, masked):
    rng = np.random.default_rng(k + 100 * masked)
    avgdl = float(segment.doc_len.mean())
    mask = (rng.random(segment.rows) > 0.3).astype(np.uint8) if masked else None
    checked = 0
    for terms in _queries(rng, 150):
        weights = rng.uniform(0.2, 5.0, len(terms))
        rows, scores = segment.top_k(terms, weights, k, K1, B, avgdl, mask)
        ids = [segment.term_ids[t] for t in terms if t in segment.term_ids]
        kept = np.asarray([w for t, w in zip(terms, weights) if t in segment.term_ids])
        ref_rows, ref_scores = exhaustive_top_k(segment.indptr, segment.indices, segment.tf, segment.doc_len,
                                                np.zeros(0, np.uint8) if mask is None else mask,
                                                np.asarray(ids, dtype=np.int64), kept, K1, B, avgdl, k)
        assert len(rows) == len(ref_rows)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-12, atol=1e-12)  # same ranking by score
        exact = segment.score_rows(terms, weights, np.sort(rows), K1, B, avgdl)
        np.testing.assert_allclose(np.sort(scores), np.sort(exact), rtol=1e-6)  # score_rows works in float32
        if mask is not None:
            assert mask[rows].all()
        checked += len(rows) > 0
    assert checked > 100
    with scratch(segment.rows) as first:  # sets are reused, so each query must leave its set clean
        pass
    with scratch(segment.rows) as again:
        assert again[0] is first[0]
        assert not again[0].any() and not again[1].any()


def test_bounds_follow_the_collection_statistics(segment):
    low = segment.saturation_bounds(K1, B, 10.0).copy()
    high = segment.saturation_bounds(K1, B, 100.0)
    assert (high >= low).all() and (high > low).any()  # a longer average length saturates less
    assert (high <= K1 + 1.0).all()


def test_the_kernel_leaves_its_scratch_clean(segment):
    rng = np.random.default_rng(3)
    scores, seen = np.zeros(segment.rows), np.zeros(segment.rows, dtype=np.uint8)
    touched = np.empty(segment.rows, dtype=np.int64)
    avgdl = float(segment.doc_len.mean())
    for terms in _queries(rng, 40):
        ids = np.asarray([segment.term_ids[t] for t in terms if t in segment.term_ids], dtype=np.int64)
        weights = rng.uniform(0.2, 5.0, len(ids))
        bounds = weights * segment.saturation_bounds(K1, B, avgdl)[ids]
        order = np.argsort(-bounds, kind="stable")
        rows, _ = pruned_top_k(segment.indptr, segment.indices, segment.tf, segment.doc_len, np.zeros(0, np.uint8),
                               ids[order], weights[order], bounds[order], K1, B, avgdl, 5, scores, seen, touched)
        assert len(rows) > 0 or len(ids) == 0
        assert not scores.any() and not seen.any()
