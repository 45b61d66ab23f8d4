"""Shared by the shard tests: vectors from a hashed bag of words, so dense scores mean something
(queries land near documents sharing their terms) without loading an embedding model."""
from __future__ import annotations

import hashlib

import numpy as np

from indexes.analyzer import Analyzer
from indexes.collection import Home
from indexes.config import BM25Config, CollectionConfig, FusionConfig
from indexes.documents import SourceDocument
from rag.retriever import Retriever

DIM = 48
ANALYZER = Analyzer(BM25Config())
_TERM_VECTORS: dict[str, np.ndarray] = {}


def bag_of_words_vector(text: str) -> np.ndarray:
    total = np.zeros(DIM, dtype=np.float64)
    for term in ANALYZER.terms(text):
        if term not in _TERM_VECTORS:
            seed = int.from_bytes(hashlib.blake2b(term.encode(), digest_size=4).digest(), "big")
            _TERM_VECTORS[term] = np.random.default_rng(seed).standard_normal(DIM)
        total += _TERM_VECTORS[term]
    norm = np.linalg.norm(total)
    return (total / norm if norm else total).astype(np.float32)


class BagOfWordsRetriever(Retriever):
    def embed_query(self, query: str) -> np.ndarray:
        return bag_of_words_vector(query)


def upsert(writer, collection, document: SourceDocument) -> None:
    chunks = collection.chunker.split(document)
    writer.upsert(document, np.stack([bag_of_words_vector(c.text) for c in chunks]))


def build(root, shards: int, documents: list[SourceDocument], name: str = "corpus"):
    # these vectors come from no embedder, so commit-time calibration (which embeds pseudo-queries with
    # the collection's model) cannot run: both sides use the configured fusion settings
    config = CollectionConfig(name=name, shards=shards, fusion=FusionConfig(calibrate=False))
    collection = Home(root).create(config)
    with collection.writer() as writer:
        for document in documents:
            upsert(writer, collection, document)
        writer.commit()
    return Home(root).open(name)


def sharded_home(root, records, shards: int, name: str = "corpus"):
    """A home holding one sharded collection of `records` (real embeddings, no calibration): what the
    Ray Serve tests serve. Returns the home folder."""
    collection = Home(root).create(CollectionConfig(name=name, shards=shards, fusion=FusionConfig(calibrate=False)))
    with collection.writer() as writer:
        for record in records:
            writer.upsert(SourceDocument(record["_id"], record["text"]))
        writer.commit()
    return root
