"""Merging segments: live rows of many segments become one, without re-embedding anything.

Postings are re-keyed onto a merged vocabulary with scipy and vectors are copied, so a merge costs
I/O and (for large segments) an HNSW build, never a model forward pass; chunk tables are copied
inside SQLite, never through Python objects. Copied vectors keep the fingerprint of the embedder that
made them (`indexes.embedder_provenance` runs), so a merge never hides where vectors came from.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from indexes.config import DenseConfig
from indexes.chunk_store import merge_chunk_stores
from indexes.embedder_provenance import EmbedderRun, coalesce, kept_runs
from indexes.segment import Segment, publish_segment
from indexes.sparse import SparseSegment


def merge_segments(segments_dir: Path, segment_id: str, segments: list[Segment],
                   live: list[np.ndarray | None], dense_config: DenseConfig,
                   vectors_instead: np.ndarray | None = None, runs_instead: list[EmbedderRun] | None = None) -> Path:
    """One segment of the live rows of `segments`. `vectors_instead` (one row per live row, in order,
    with `runs_instead` saying which embedder made them) replaces the copied vectors: re-embedding a
    collection (`CollectionWriter.reembed_segments`) keeps chunk tables and postings as they are."""
    vocab: dict[str, int] = {}
    matrices, lengths, vectors, sources, runs = [], [], [], [], []
    for segment, mask in zip(segments, live):
        alive = np.ones(segment.rows, dtype=bool) if mask is None else mask.astype(bool)
        sources.append((segment.folder, alive))
        columns = np.asarray([vocab.setdefault(t, len(vocab)) for t in segment.sparse.vocab], dtype=np.int64)
        matrix = segment.sparse.to_matrix().tocsr()[alive].tocoo()
        matrices.append((matrix.row, columns[matrix.col], matrix.data, matrix.shape[0]))
        lengths.append(segment.sparse.doc_len[alive])
        if vectors_instead is None:  # re-embedding: never copy old vectors it drops anyway
            vectors.append(segment.dense.vectors[alive])
        runs.extend(kept_runs(segment.embedder_runs, alive))
    offset, rows, cols, data = 0, [], [], []
    for row, col, values, height in matrices:
        rows.append(row + offset)
        cols.append(col)
        data.append(values)
        offset += height
    merged = sp.coo_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))),
                           shape=(offset, len(vocab))).tocsc()
    sparse = SparseSegment.from_matrix(list(vocab), merged, np.concatenate(lengths))
    return publish_segment(segments_dir, segment_id, lambda folder: merge_chunk_stores(folder, sources), sparse,
                           np.concatenate(vectors) if vectors_instead is None else vectors_instead, dense_config,
                           coalesce(runs) if runs_instead is None else runs_instead)
