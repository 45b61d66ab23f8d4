"""Ingestion on Ray: chunking and embedding run on a Ray Data actor pool; storage stays Mighty's.

The expensive step of ingestion is the embedder's forward pass, so that is what Ray spreads: a batch
of documents becomes a Ray Data dataset, `map_batches` over an `ActorPoolStrategy` pool (each actor
loads the collection's chunker and embedder once) cuts every document into the collection's chunks
and embeds them, and the vectors come back in document order. Everything with semantics stays with
the single writer on the driver: reading and bad-input reporting (`indexes.readers`), content-hash
skipping (unchanged documents are never sent to Ray), upserts and deletes routed to their shard,
whole per-shard segments written in bulk at flush, and one atomic generation at commit. So a
collection built this way answers exactly as one built in a single process.
Needs the `ray` extra (`pip install mighty[ray]`).
"""
from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import ray
from ray.data import ActorPoolStrategy

from indexes.collection import Collection, Home
from indexes.documents import SourceDocument, embedding_texts
from indexes.embedder_check import EmbedderChanged
from indexes.embedder_fingerprint import embedder_fingerprint
from indexes.writer import CollectionWriter, NoProgress, ProgressSink

BATCH_DOCUMENTS = 2048  # documents embedded per Ray Data job (bounds what waits in driver memory)
ROWS_PER_BATCH = 32  # documents per map_batches call


def connect(address: str | None) -> None:
    """Join the Ray cluster at `address` (HOST:PORT of its head), or start a local instance ("local"
    or None). An address nobody answers at is a `ConnectionError` within seconds (Ray itself would
    retry for minutes)."""
    if ray.is_initialized():
        return
    if address in (None, "", "local"):
        ray.init(include_dashboard=False, log_to_driver=False)
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"a Ray address is HOST:PORT (or 'local'), not {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {host}:{port} ({exc.strerror or exc})") from None
    ray.init(address=address, log_to_driver=False)


class ChunkEmbedder:
    """A Ray Data callable class: one instance per pool actor, holding the collection's models."""

    def __init__(self, home: str, name: str) -> None:
        self.collection = Home(Path(home)).open(name)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        collection = self.collection
        positions, texts = [], []
        for position, doc_id, text, title, metadata in zip(batch["position"], batch["id"], batch["text"],
                                                           batch["title"], batch["metadata"]):
            document = SourceDocument(str(doc_id), str(text), str(title), json.loads(str(metadata)))
            chunks = collection.chunker.split(document)
            texts.extend(embedding_texts(chunks, collection.config.embedder.include_title))
            positions.extend([int(position)] * len(chunks))
        vectors = collection.embedder.encode(texts) if texts else np.zeros((0, 1), dtype=np.float32)
        fingerprint = embedder_fingerprint(collection.embedder) or ""  # which embedder this actor runs
        return {"position": np.asarray(positions, dtype=np.int64), "vector": vectors,
                "fingerprint": np.asarray([fingerprint] * len(positions), dtype=object)}


class RayEmbeddingWriter:
    """A collection writer whose new or changed documents are embedded on Ray in batches.

    Same interface as the writer it wraps; `upsert` queues a document that needs embedding (and
    returns "queued"), and `delete`, `flush` and `commit` first write out what is queued, in order."""

    def __init__(self, writer: CollectionWriter, collection: Collection, home: Path, actors: int,
                 progress: ProgressSink | None = None) -> None:
        self.writer, self.collection, self.home, self.actors = writer, collection, home, actors
        self._progress = progress or NoProgress()
        self._queued: list[SourceDocument] = []

    @property
    def report(self):
        return self.writer.report

    def upsert(self, document: SourceDocument, vectors: np.ndarray | None = None) -> str:
        if vectors is not None or self.writer.unchanged(document):
            return self.writer.upsert(document, vectors)
        self._queued.append(document)
        if len(self._queued) >= BATCH_DOCUMENTS:
            self._embed_queued()
        return "queued"

    def delete(self, doc_id: str) -> bool:
        self._embed_queued()
        return self.writer.delete(doc_id)

    def flush(self) -> None:
        self._embed_queued()
        self.writer.flush()

    def commit(self):
        self._embed_queued()
        return self.writer.commit()

    def _embed_queued(self) -> None:
        queued, self._queued = self._queued, []
        if not queued:
            return
        self._progress.start(f"embedding on Ray ({self.actors} actor{'s' * (self.actors > 1)})", len(queued))
        vectors, fingerprint = embed_on_ray(queued, self.home, self.collection.name, self.actors, self._progress)
        for position, document in enumerate(queued):  # the writer refuses vectors of another embedder
            self.writer.upsert(document, vectors[position], fingerprint)

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> "RayEmbeddingWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def embed_on_ray(documents: list[SourceDocument], home: Path, name: str, actors: int,
                 progress: ProgressSink | None = None) -> tuple[list[np.ndarray | None], str | None]:
    """Chunk vectors of each document (one array per document, rows in chunk order), and the fingerprint
    of the embedder the actors ran (`indexes.embedder_fingerprint`). Actors on nodes whose model files
    differ would mix embedders in one collection: that is refused."""
    rows = [{"position": i, "id": d.id, "text": d.text, "title": d.title,
             "metadata": json.dumps(d.metadata, ensure_ascii=False)} for i, d in enumerate(documents)]
    blocks = max(1, min(len(rows), actors * 4))  # enough blocks to keep every actor busy
    dataset = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
        ChunkEmbedder, fn_constructor_args=(str(home), name), batch_size=ROWS_PER_BATCH, batch_format="numpy",
        compute=ActorPoolStrategy(size=actors), num_cpus=1)
    parts: dict[int, list[np.ndarray]] = {}
    fingerprints: set[str] = set()
    for batch in dataset.iter_batches(batch_format="numpy", batch_size=None):
        positions, vectors = batch["position"], np.asarray(batch["vector"], dtype=np.float32)
        fingerprints.update(str(f) for f in batch["fingerprint"])
        for position in np.unique(positions):
            parts.setdefault(int(position), []).append(vectors[positions == position])
        if progress is not None:
            progress.advance(len(np.unique(positions)))
    if len(fingerprints) > 1:
        raise EmbedderChanged(f"Ray actors of collection {name!r} ran different embedders ({', '.join(sorted(fingerprints))}); "
                              "give every node the same model files, then add the documents again")
    fingerprint = next(iter(fingerprints), "") or None
    return [np.concatenate(parts[i]) if i in parts else None for i in range(len(documents))], fingerprint  # None: no chunks
