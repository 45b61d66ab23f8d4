"""Okapi BM25 over immutable segments of raw term-frequency postings.

Postings keep raw term frequencies and document lengths, never precomputed idf: collection
statistics (N, document frequencies, average length) are gathered separately and summed across
segments (or, later, across shards on several machines), so scores stay global and exact while
segments come and go. Scoring and top-k selection run in numba with exact MaxScore pruning
(`indexes.sparse_top_k`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from indexes.config import BM25Config
from indexes.sparse_top_k import pruned_top_k, score_sorted_rows, scratch, term_bounds

_EMPTY_MASK = np.zeros(0, dtype=np.uint8)


class SparseSegment:
    """Term-major (CSC) postings of one segment: rows are the segment's chunks."""

    def __init__(self, vocab: list[str], indptr: np.ndarray, indices: np.ndarray, tf: np.ndarray,
                 doc_len: np.ndarray) -> None:
        self.vocab = vocab
        self.term_ids = {term: i for i, term in enumerate(vocab)}
        self.indptr, self.indices, self.tf, self.doc_len = indptr, indices, tf, doc_len
        self._bounds: tuple[tuple[float, float, float], np.ndarray] | None = None

    @property
    def rows(self) -> int:
        return len(self.doc_len)

    @classmethod
    def build(cls, documents: list[list[str]]) -> "SparseSegment":
        term_ids: dict[str, int] = {}
        rows, cols = [], []
        for row, terms in enumerate(documents):
            for term in terms:
                cols.append(term_ids.setdefault(term, len(term_ids)))
            rows.append(np.full(len(terms), row, dtype=np.int32))
        row_index = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int32)
        col_index = np.asarray(cols, dtype=np.int32)
        ones = np.ones(len(col_index), dtype=np.float32)
        matrix = sp.csc_matrix((ones, (row_index, col_index)), shape=(len(documents), len(term_ids)))
        matrix.sum_duplicates()
        doc_len = np.asarray([len(t) for t in documents], dtype=np.float32)
        return cls(list(term_ids), matrix.indptr.astype(np.int64), matrix.indices.astype(np.int32),
                   matrix.data.astype(np.float32), doc_len)

    def to_matrix(self) -> sp.csc_matrix:
        return sp.csc_matrix((self.tf, self.indices, self.indptr), shape=(self.rows, len(self.vocab)))

    @classmethod
    def from_matrix(cls, vocab: list[str], matrix: sp.csc_matrix, doc_len: np.ndarray) -> "SparseSegment":
        matrix = matrix.tocsc()
        matrix.sort_indices()
        return cls(vocab, matrix.indptr.astype(np.int64), matrix.indices.astype(np.int32),
                   matrix.data.astype(np.float32), doc_len.astype(np.float32))

    def save(self, folder: Path) -> None:
        with open(folder / "sparse.npz", "wb") as handle:
            np.savez(handle, indptr=self.indptr, indices=self.indices, tf=self.tf, doc_len=self.doc_len)
        (folder / "vocab.json").write_text(json.dumps(self.vocab, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "SparseSegment":
        with np.load(folder / "sparse.npz", allow_pickle=False) as arrays:
            parts = {name: arrays[name] for name in ("indptr", "indices", "tf", "doc_len")}
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        return cls(vocab, **parts)

    # -- statistics, kept apart from postings so they can be summed across segments and shards --
    def document_frequencies(self, terms: list[str], live: np.ndarray | None) -> np.ndarray:
        freqs = np.zeros(len(terms), dtype=np.int64)
        for i, term in enumerate(terms):
            tid = self.term_ids.get(term)
            if tid is None:
                continue
            start, end = self.indptr[tid], self.indptr[tid + 1]
            freqs[i] = end - start if live is None else int(live[self.indices[start:end]].sum())
        return freqs

    def all_document_frequencies(self, live: np.ndarray | None) -> dict[str, int]:
        counts = np.diff(self.indptr)
        if live is not None:
            term_of_posting = np.repeat(np.arange(len(self.vocab)), counts)
            counts = np.bincount(term_of_posting, weights=live[self.indices], minlength=len(self.vocab))
        return {term: int(c) for term, c in zip(self.vocab, counts) if c > 0}

    def length_stats(self, live: np.ndarray | None) -> tuple[int, float]:
        if live is None:
            return self.rows, float(self.doc_len.sum(dtype=np.float64))
        return int(live.sum()), float(self.doc_len[live.astype(bool)].sum(dtype=np.float64))

    def top_k(self, terms: list[str], weights: np.ndarray, k: int, k1: float, b: float, avgdl: float,
              mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Best `k` rows by BM25 given global per-term weights (idf x query count); `mask` 0 = skip."""
        ids = [self.term_ids.get(t, -1) for t in terms]
        keep = [i for i, tid in enumerate(ids) if tid >= 0]
        if not keep or self.rows == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        term_ids = np.asarray([ids[i] for i in keep], dtype=np.int64)
        term_weights = np.asarray(weights, dtype=np.float64)[keep]
        bounds = np.maximum(term_weights, 0.0) * self.saturation_bounds(k1, b, avgdl)[term_ids]
        order = np.argsort(-bounds, kind="stable")
        with scratch(self.rows) as (scores, seen, touched):
            return pruned_top_k(self.indptr, self.indices, self.tf, self.doc_len,
                                _EMPTY_MASK if mask is None else mask, term_ids[order], term_weights[order],
                                bounds[order], float(k1), float(b), float(avgdl), int(k), scores, seen, touched)

    def saturation_bounds(self, k1: float, b: float, avgdl: float) -> np.ndarray:
        """Per term, the best BM25 saturation factor over its postings under these parameters: what
        MaxScore pruning (`indexes.sparse_top_k`) needs. Computed once per (k1, b, avgdl), i.e. once
        per generation of the collection statistics (a linear pass over the postings)."""
        key = (float(k1), float(b), float(avgdl))
        cached = self._bounds
        if cached is None or cached[0] != key:
            cached = self._bounds = (key, term_bounds(self.indptr, self.indices, self.tf, self.doc_len, *key))
        return cached[1]


    def score_rows(self, terms: list[str], weights: np.ndarray, rows: np.ndarray, k1: float, b: float,
                   avgdl: float) -> np.ndarray:
        """Exact BM25 of chosen rows (e.g. candidates another retriever found): a merge walk or one
        binary search per row in each term's sorted postings, so no forward index is needed."""
        ids = [self.term_ids.get(t, -1) for t in terms]
        keep = [i for i, tid in enumerate(ids) if tid >= 0]
        rows = np.asarray(rows, dtype=np.int64)
        if not keep or not len(rows):
            return np.zeros(len(rows), dtype=np.float64)
        distinct, inverse = np.unique(rows, return_inverse=True)
        with scratch(self.rows) as (scores, _, _):
            found = score_sorted_rows(self.indptr, self.indices, self.tf, self.doc_len,
                                      np.asarray([ids[i] for i in keep], dtype=np.int64),
                                      np.asarray(weights, dtype=np.float64)[keep], float(k1), float(b),
                                      float(avgdl), distinct, scores)
        return found[inverse]


def bm25_of_terms(document_terms: list[str], terms: list[str], weights: np.ndarray, k1: float, b: float,
                  avgdl: float) -> float:
    """BM25 of a text that is not in the index (its analyzed terms) under the collection's
    statistics: the same formula as `score_rows`, for callers that score a modified chunk."""
    counts: dict[str, int] = {}
    for term in document_terms:
        counts[term] = counts.get(term, 0) + 1
    norm = k1 * (1.0 - b + b * len(document_terms) / avgdl)
    return float(sum(w * f * (k1 + 1.0) / (f + norm) for t, w in zip(terms, weights) if (f := counts.get(t, 0))))


@dataclass(frozen=True)
class CollectionStats:
    """Global BM25 statistics: summed over every segment (or shard) of a collection."""

    documents: int
    total_length: float
    mean_idf: float = 0.0  # only needed by the "robertson" idf floor

    @property
    def avgdl(self) -> float:
        return self.total_length / self.documents if self.documents else 1.0


def idf(config: BM25Config, stats: CollectionStats, df: np.ndarray) -> np.ndarray:
    n = stats.documents
    df = df.astype(np.float64)
    if config.idf == "lucene":
        return np.log1p((n - df + 0.5) / (df + 0.5))
    values = np.log(n - df + 0.5) - np.log(df + 0.5)
    return np.where(values < 0, config.epsilon * stats.mean_idf, values)


def robertson_mean_idf(df_by_term: dict[str, int], documents: int) -> float:
    """rank-bm25's BM25Okapi floors negative idf at epsilon x the mean idf over the vocabulary."""
    if not df_by_term:
        return 0.0
    df = np.fromiter(df_by_term.values(), dtype=np.float64, count=len(df_by_term))
    return float(np.mean(np.log(documents - df + 0.5) - np.log(df + 0.5)))


def query_weights(config: BM25Config, stats: CollectionStats, terms: list[str],
                  df: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Unique query terms and their weights: idf x how often the term occurs in the query."""
    unique = list(dict.fromkeys(terms))
    counts = np.asarray([terms.count(t) for t in unique], dtype=np.float64)
    return unique, idf(config, stats, df) * counts


def gather_stats(config: BM25Config, parts: list[tuple[SparseSegment, np.ndarray | None]]) -> CollectionStats:
    documents, total = 0, 0.0
    for segment, live in parts:
        n, length = segment.length_stats(live)
        documents += n
        total += length
    mean = 0.0
    if config.idf == "robertson":
        merged: dict[str, int] = {}
        for segment, live in parts:
            for term, count in segment.all_document_frequencies(live).items():
                merged[term] = merged.get(term, 0) + count
        mean = robertson_mean_idf(merged, documents)
    return CollectionStats(documents, total, mean)

