"""Dense vectors of one segment behind FAISS: exact inner product when small, HNSW when large.

Rows are the segment's own positions, so a delete is a tombstone in the live mask and a filter is
a bitmap; neither needs FAISS's (non-thread-safe) remove or add on an index that serves queries.
"""
from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from indexes.config import DenseConfig

_BRUTE_FORCE_BELOW = 0.02  # when fewer rows than this share survive a filter, scan them exactly


class DenseSegment:
    def __init__(self, vectors: np.ndarray, index: faiss.Index) -> None:
        self.vectors = vectors
        self.index = index

    @property
    def rows(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def kind(self) -> str:
        return "hnsw" if isinstance(self.index, faiss.IndexHNSW) else "flat"

    @classmethod
    def build(cls, vectors: np.ndarray, config: DenseConfig) -> "DenseSegment":
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        dim = vectors.shape[1]
        if vectors.shape[0] > config.hnsw_threshold:
            index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = config.ef_construction
        else:
            index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return cls(vectors, index)

    def save(self, folder: Path) -> None:
        np.save(folder / "vectors.npy", self.vectors, allow_pickle=False)
        if self.kind == "hnsw":
            faiss.write_index(self.index, str(folder / "dense.faiss"))

    @classmethod
    def load(cls, folder: Path) -> "DenseSegment":
        vectors = np.load(folder / "vectors.npy", allow_pickle=False)
        graph = folder / "dense.faiss"
        if graph.exists():
            index = faiss.read_index(str(graph))
        else:
            index = faiss.IndexFlatIP(vectors.shape[1])
            index.add(vectors)
        return cls(vectors, index)

    def top_k(self, query: np.ndarray, k: int, mask: np.ndarray | None, ef_search: int) -> tuple[np.ndarray, np.ndarray]:
        if self.rows == 0 or k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        query = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        k = min(k, self.rows)
        if mask is not None:
            allowed = np.flatnonzero(mask)
            if len(allowed) == 0:
                return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
            if len(allowed) <= max(k, _BRUTE_FORCE_BELOW * self.rows) or self.kind == "flat" and len(allowed) < self.rows // 2:
                return _exact(self.vectors, allowed, query[0], k)
            bitmap = np.packbits(mask.astype(bool), bitorder="little")
            selector = faiss.IDSelectorBitmap(self.rows, faiss.swig_ptr(bitmap))
            params = self._params(ef_search, selector)
            scores, rows = self.index.search(query, k, params=params)
        else:
            scores, rows = self.index.search(query, k, params=self._params(ef_search, None))
        found = rows[0] >= 0
        return rows[0][found].astype(np.int64), scores[0][found]

    def _params(self, ef_search: int, selector):
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(ef_search, 1)
        else:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
        return params


def _exact(vectors: np.ndarray, allowed: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = vectors[allowed] @ query
    k = min(k, len(allowed))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="mergesort")]
    return allowed[top].astype(np.int64), scores[top].astype(np.float32)
