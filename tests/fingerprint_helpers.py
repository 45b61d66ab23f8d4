"""Fake embedders for the fingerprint tests: hashed bags of words, so dense search means something
without a model, with a fingerprint each and a `salt` that makes a different "model"."""
from __future__ import annotations

import hashlib

import numpy as np

from indexes.analyzer import Analyzer
from indexes.collection import Home
from indexes.config import BM25Config, CollectionConfig, FusionConfig
from indexes.documents import SourceDocument

DIM = 32
_ANALYZER = Analyzer(BM25Config())

DOCUMENTS = [SourceDocument(f"d{i}", text, title=f"Doc {i}") for i, text in enumerate([
    "Segments are immutable and published by an atomic rename of a temporary folder.",
    "The writer holds an exclusive lock so that only one process writes a collection.",
    "BM25 scores terms by frequency, saturation and inverse document frequency.",
    "Dense retrieval compares unit-length vectors by their inner product.",
    "Hybrid search fuses the BM25 and dense lists with calibrated weights.",
    "A crash during indexing leaves the previous generation intact and serving.",
    "Quantised int8 encoders run faster than fp32 ones on small CPUs.",
    "Shards are chosen by a stable hash of each document identifier.",
    "Tokenizers cut text into word pieces before the encoder reads it.",
    "Calibration measures fusion settings on pseudo queries at each commit.",
    "Garbage collection removes generations beyond the newest few.",
    "Filters restrict a search to chunks whose metadata matches.",
])]


def generated_documents(count: int, seed: int = 0) -> list[SourceDocument]:
    """`count` sentence-like documents over a small vocabulary: enough chunks (and sentences) for
    commit-time fusion calibration (`indexes.calibration.MIN_CHUNKS`) to measure."""
    words = ("index segment vector query shard token merge commit lock fusion weight recall cosine "
             "model recipe export quantise embed chunk title filter score rank crash rename folder "
             "writer reader snapshot manifest generation garbage calibrate sample seed agree measure").split()
    rng = np.random.default_rng(seed)

    def sentence() -> str:
        return " ".join(rng.choice(words, size=int(rng.integers(8, 14)))).capitalize() + "."

    return [SourceDocument(f"g{i}", " ".join(sentence() for _ in range(3))) for i in range(count)]


class FakeEmbedder:
    """`salt` picks the term vectors (another salt: an unrelated model); `noise` perturbs every vector a
    little (a re-quantised copy of the same model); `fingerprint` is what it claims to be."""

    def __init__(self, fingerprint: str | None, salt: str = "a", noise: float = 0.0) -> None:
        self.fingerprint, self.salt, self.noise = fingerprint, salt, noise
        self.dim, self.model_dir = DIM, "fake"
        self.passages = 0  # texts embedded by `encode` (stored passages), to count measurements

    def _vector(self, text: str) -> np.ndarray:
        total = np.zeros(DIM)
        for term in _ANALYZER.terms(text):
            seed = int.from_bytes(hashlib.blake2b(f"{self.salt}:{term}".encode(), digest_size=4).digest(), "big")
            total += np.random.default_rng(seed).standard_normal(DIM)
        if self.noise:
            seed = int.from_bytes(hashlib.blake2b(f"noise:{text}".encode(), digest_size=4).digest(), "big")
            total = total / max(np.linalg.norm(total), 1e-12) + self.noise * np.random.default_rng(seed).standard_normal(DIM)
        norm = np.linalg.norm(total)
        return (total / norm if norm else total).astype(np.float32)

    def encode(self, texts, progress=None) -> np.ndarray:
        self.passages += len(texts)
        if progress:
            progress(len(texts))
        return np.stack([self._vector(t) for t in texts]) if texts else np.zeros((0, DIM), np.float32)

    def encode_queries(self, texts) -> np.ndarray:
        return np.stack([self._vector(t) for t in texts])


def use_embedder(monkeypatch, embedder: FakeEmbedder) -> None:
    """Every collection opened from now on embeds with `embedder` (what a changed model folder does)."""
    import indexes.collection

    monkeypatch.setattr(indexes.collection, "load_embedder", lambda config, allowed=None: embedder)


def indexed_home(root, monkeypatch, embedder: FakeEmbedder, shards: int = 1, calibrate: bool = False,
                 documents: list[SourceDocument] = DOCUMENTS, max_segments: int = 8):
    """A home with one collection "c" of `documents`, embedded by `embedder`; returns the root."""
    use_embedder(monkeypatch, embedder)
    config = CollectionConfig(name="c", shards=shards, fusion=FusionConfig(calibrate=calibrate, calibration_samples=60),
                              max_segments=max_segments)
    collection = Home(root).create(config)
    with collection.writer() as writer:
        for document in documents:
            writer.upsert(document)
        writer.commit()
    return root
