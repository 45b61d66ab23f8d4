"""A RouteLLM-style router: from the query embedding alone, how likely is the small model right?

Trained from `mighty eval answers` results (each question's text and whether the small model's
answer was correct), it is a logistic regression on the collection embedder's query vector: small
enough to fit in a few hundred milliseconds of numpy, to store as plain JSON next to the collection
(never pickle: a stored file is data, read with `json` and checked field by field), and to apply in
microseconds before any model runs.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexes.durable import atomic_write_text

ROUTER_FILE = "cascade-router.json"
FORMAT = "mighty-cascade-router/1"


class RouterError(ValueError):
    """No router, or a stored one that cannot be used (wrong format, embedder or numbers)."""


@dataclass(frozen=True)
class Router:
    weights: np.ndarray  # [dim]
    bias: float
    embedder: str  # the collection embedder whose query vectors it was trained on
    small: str  # the small model whose correctness it predicts
    trained_on: int = 0
    positives: int = 0

    def confidence(self, vector: np.ndarray) -> float:
        """P(small model correct) for one query vector."""
        vector = np.asarray(vector, dtype=np.float64).reshape(-1)
        if vector.shape != self.weights.shape:
            raise RouterError(f"router expects {self.weights.shape[0]}-dimensional queries, got {vector.shape[0]}")
        return float(_sigmoid(float(vector @ self.weights) + self.bias))

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "embedder": self.embedder, "small": self.small,
                           "trained_on": self.trained_on, "positives": self.positives, "bias": self.bias,
                           "weights": [round(float(w), 7) for w in self.weights]})


def train(vectors: np.ndarray, labels: Sequence[bool], embedder: str, small: str, l2: float = 1.0,
          steps: int = 2000, rate: float = 0.5) -> Router:
    """L2-regularised logistic regression by full-batch gradient descent (a few hundred rows)."""
    x = np.asarray(vectors, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(y) or len(y) < 2:
        raise RouterError("a router needs at least two answered questions with query vectors")
    if y.min() == y.max():
        raise RouterError("a router needs questions the small model got right and ones it got wrong; "
                          f"all {len(y)} were {'right' if y[0] else 'wrong'}")
    weights, bias = np.zeros(x.shape[1]), float(np.log(y.mean() / (1 - y.mean())))
    for _ in range(steps):
        error = _sigmoid(x @ weights + bias) - y
        weights -= rate * (x.T @ error / len(y) + l2 * weights / len(y))
        bias -= rate * float(error.mean())
    return Router(weights, bias, embedder, small, len(y), int(y.sum()))


def router_path(collection_folder: Path) -> Path:
    return collection_folder / ROUTER_FILE


def save(router: Router, collection_folder: Path) -> Path:
    path = router_path(collection_folder)
    atomic_write_text(path, router.to_json())
    return path


def load(collection_folder: Path) -> Router:
    path = router_path(collection_folder)
    if not path.is_file():
        raise RouterError("this collection has no trained cascade router; train one with "
                          "`mighty cascade train-router RESULTS.jsonl --collection NAME`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RouterError(f"the stored cascade router is unreadable ({type(exc).__name__}); train it again") from None
    return from_dict(data)


def from_dict(data: object) -> Router:
    """A router from parsed JSON, every field checked (the file may have been edited by hand)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RouterError(f"the stored cascade router is not in format {FORMAT}; train it again")
    weights, bias = data.get("weights"), data.get("bias")
    if (not isinstance(weights, list) or not weights
            or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights)):
        raise RouterError("the stored cascade router's weights must be a non-empty list of finite numbers")
    if not isinstance(bias, (int, float)) or isinstance(bias, bool) or not math.isfinite(bias):
        raise RouterError("the stored cascade router's bias must be a finite number")
    texts = {key: data.get(key) for key in ("embedder", "small")}
    if not all(isinstance(v, str) and v for v in texts.values()):
        raise RouterError("the stored cascade router must name its embedder and small model")
    counts = [data.get("trained_on", 0), data.get("positives", 0)]
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        raise RouterError("the stored cascade router's counts must be whole numbers")
    return Router(np.asarray(weights, dtype=np.float64), float(bias), texts["embedder"], texts["small"], *counts)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))
