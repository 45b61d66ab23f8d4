"""Upserts by content hash: unchanged documents are skipped, changed ones never leave duplicates."""
from __future__ import annotations

from collections import Counter

from indexes.collection import Home
from indexes.config import ChunkingConfig, CollectionConfig
from indexes.documents import SourceDocument
from rag.retriever import Retriever
from rag.schemas import RetrievalRequest


def _chunk_ids(collection):
    snapshot = collection.snapshot()
    ids = []
    for segment, live in zip(snapshot.segments, snapshot.live):
        for chunk_row, chunk in enumerate(segment.store.all_chunks()):
            if live is None or live[chunk_row]:
                ids.append((chunk.doc_id, chunk.chunk_index))
    return ids


def test_upsert_update_delete_without_duplicates(tmp_path):
    collection = Home(tmp_path).create(CollectionConfig(name="c", chunking=ChunkingConfig(size=32, overlap=8)))
    long_text = " ".join(f"Sentence {i} talks about volcanoes and lava flows." for i in range(40))
    docs = [SourceDocument("a", long_text, "Volcanoes"), SourceDocument("b", "Bees make honey from nectar.", "Bees")]
    with collection.writer() as writer:
        assert [writer.upsert(d) for d in docs] == ["added", "added"]
        writer.commit()
    chunks_a = sum(1 for doc_id, _ in _chunk_ids(collection) if doc_id == "a")
    assert chunks_a > 3
    with collection.writer() as writer:
        assert writer.upsert(docs[0]) == "unchanged"
        assert writer.commit() is None  # nothing changed: no new generation
    assert collection.snapshot().generation == 1
    with collection.writer() as writer:
        assert writer.upsert(SourceDocument("a", "Volcanoes sleep for centuries.", "Volcanoes")) == "updated"
        writer.commit()
    ids = _chunk_ids(collection)
    assert not [key for key, n in Counter(ids).items() if n > 1]
    assert [k for k in ids if k[0] == "a"] == [("a", 0)]
    retriever = Retriever(collection)
    hits = retriever.search(RetrievalRequest(query="lava flows", mode="bm25")).hits
    assert all(h.id != "a" or "lava" not in h.text for h in hits)
    with collection.writer() as writer:
        assert writer.delete("b") and not writer.delete("missing")
        writer.commit()
        assert writer.report.not_found == ["missing"]
    assert {doc_id for doc_id, _ in _chunk_ids(collection)} == {"a"}
    assert collection.snapshot().manifest.documents == 1


def test_same_document_twice_in_one_batch_keeps_the_last(tmp_path):
    collection = Home(tmp_path).create(CollectionConfig(name="c"))
    with collection.writer() as writer:
        writer.upsert(SourceDocument("x", "first version about cats"))
        writer.upsert(SourceDocument("x", "second version about dogs"))
        writer.commit()
    (chunk,) = [c for s in collection.snapshot().segments for c in s.store.all_chunks()]
    assert chunk.text == "second version about dogs"


def test_segments_merge_and_keep_every_live_document(tmp_path):
    config = CollectionConfig(name="c", max_segments=2)
    collection = Home(tmp_path).create(config)
    for batch in range(4):
        with collection.writer() as writer:
            for i in range(5):
                writer.upsert(SourceDocument(f"d{batch}-{i}", f"document {batch} {i} about topic{batch}"))
            if batch == 3:
                writer.delete("d0-0")
            writer.commit()
    snapshot = collection.snapshot()
    assert len(snapshot.segments) <= 2
    assert snapshot.manifest.documents == 19
    ids = {doc_id for doc_id, _ in _chunk_ids(collection)}
    assert len(ids) == 19 and "d0-0" not in ids
    hits = Retriever(collection).search(RetrievalRequest(query="topic2", mode="bm25", top_k=10)).hits
    assert {h.id for h in hits} == {f"d2-{i}" for i in range(5)}
