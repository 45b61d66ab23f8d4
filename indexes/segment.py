"""An immutable segment: chunk tables, BM25 postings and dense vectors for a batch of documents.

Segments are written once into a temporary folder and published by rename; generations then refer
to them by id, so an update never rewrites data that a reader may be using.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexes.chunk_store import ChunkStore, DocumentEntry, write_chunk_store
from indexes.config import DenseConfig
from indexes.dense import DenseSegment
from indexes.documents import Chunk
from indexes.durable import publish_folder
from indexes.embedder_provenance import EmbedderRun, coalesce
from indexes.sparse import SparseSegment

FORMAT_VERSION = 1


@dataclass
class PendingDocument:
    doc_id: str
    content_hash: str
    chunks: list[Chunk]
    terms: list[list[str]]
    vectors: np.ndarray | None = None
    fingerprint: str | None = None  # of the embedder that made `vectors` when the caller supplied them


class Segment:
    def __init__(self, segment_id: str, folder: Path, info: dict, store: ChunkStore,
                 sparse: SparseSegment, dense: DenseSegment) -> None:
        self.id, self.folder, self.info = segment_id, folder, info
        self.store, self.sparse, self.dense = store, sparse, dense

    @property
    def rows(self) -> int:
        return int(self.info["rows"])

    @property
    def embedder_runs(self) -> list[EmbedderRun]:
        """Which embedder produced which rows (`indexes.embedder_provenance`)."""
        return EmbedderRun.from_info(self.info)

    @classmethod
    def load(cls, folder: Path) -> "Segment":
        info = json.loads((folder / "segment.json").read_text(encoding="utf-8"))
        if info.get("format") != FORMAT_VERSION:
            raise RuntimeError(f"segment {folder} has format {info.get('format')}, expected {FORMAT_VERSION}")
        return cls(folder.name, folder, info, ChunkStore(folder), SparseSegment.load(folder), DenseSegment.load(folder))

    def documents(self) -> list[DocumentEntry]:
        return self.store.documents()


def write_segment(segments_dir: Path, segment_id: str, documents: list[PendingDocument],
                  sparse: SparseSegment, vectors: np.ndarray, dense_config: DenseConfig,
                  embedders: list[EmbedderRun] | None = None) -> Path:
    """Write a complete segment aside and publish it under `segments_dir/segment_id`."""
    def chunks(folder: Path) -> int:
        write_chunk_store(folder, ((d.doc_id, d.content_hash, d.chunks) for d in documents))
        return len(documents)

    return publish_segment(segments_dir, segment_id, chunks, sparse, vectors, dense_config, embedders)


def publish_segment(segments_dir: Path, segment_id: str, write_chunks: Callable[[Path], int],
                    sparse: SparseSegment, vectors: np.ndarray, dense_config: DenseConfig,
                    embedders: list[EmbedderRun] | None = None) -> Path:
    """`write_chunks(folder)` writes the chunk tables and returns how many documents they hold;
    `embedders`: which embedder made which rows (default: all of unknown origin)."""
    temporary = segments_dir / f".tmp-{segment_id}"
    temporary.mkdir(parents=True)
    documents = write_chunks(temporary)
    sparse.save(temporary)
    dense = DenseSegment.build(vectors, dense_config)
    dense.save(temporary)
    info = {"format": FORMAT_VERSION, "id": segment_id, "rows": int(vectors.shape[0]),
            "documents": documents, "dim": int(vectors.shape[1]), "dense": dense.kind,
            "created_at": time.time(),
            "embedders": [r.to_json() for r in coalesce(embedders or [EmbedderRun(None, int(vectors.shape[0]))])]}
    if sum(r["rows"] for r in info["embedders"]) != info["rows"]:
        raise ValueError(f"segment {segment_id}: embedder runs cover {info['embedders']} rows, not {info['rows']}")
    (temporary / "segment.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    final = segments_dir / segment_id
    publish_folder(temporary, final)
    return final
