"""Do a collection's stored vectors and its current embedder still belong together?

Both ingest and queries decide by measurement, not by string equality: a fingerprint
(`indexes.embedder_fingerprint`) also changes for harmless
reasons (a re-quantisation whose vectors agree at cosine ~0.99, a re-export). A seeded sample of
`SAMPLE_CHUNKS` stored chunks written by the old embedder is embedded again with the current one;
a mean cosine to their stored vectors of at least `AGREEMENT_THRESHOLD` means compatible (dense
search serves, stats say so), below it dense and hybrid requests are refused (`EmbedderIncompatible`)
while BM25 still serves; ingest of new vectors from the collection's own (changed) embedder is
accepted when they agree and refused (`EmbedderChanged`) when not, so a collection never mixes
vectors that are not comparable; the fix is `mighty index reembed NAME`. Vectors a caller supplies
under another fingerprint cannot be measured (the embedder that made them is not here) and are
refused. 0.98 sits between what a recipe change costs (onnx-int8 v1 -> v2: ~0.99;
fp32 -> int8: ~0.994, benchmarks/RESULTS.md) and what a different model gives (unrelated vectors:
near 0; even two MiniLM-class models agree far below 0.9). The measurement runs once per
(stored, current) fingerprint pair per process; every later query pays a dict lookup.

Vectors of unknown origin (written before fingerprints existed, or supplied by a caller) are never
checked: such collections serve exactly as before.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from indexes.documents import embedding_texts
from indexes.embedder_fingerprint import describe_change
from indexes.embedder_provenance import run_ranges
from indexes.generations import EmbedderShare

AGREEMENT_THRESHOLD = 0.98
SAMPLE_CHUNKS = 8
SAMPLE_SEED = 0


class EmbedderChanged(RuntimeError):
    """Ingest into a collection whose stored vectors came from another embedder (REST 409)."""


class EmbedderIncompatible(RuntimeError):
    """Dense or hybrid search where stored and query vectors measurably disagree (REST 409)."""


@dataclass(frozen=True)
class Agreement:
    """How well the current embedder reproduces vectors another fingerprint stored."""

    stored: str
    current: str
    cosine: float  # mean over the sample; 0.0 when the dimensions differ
    sample: int

    @property
    def compatible(self) -> bool:
        return self.cosine >= AGREEMENT_THRESHOLD

    def describe(self, name: str) -> str:
        change = describe_change(self.stored, self.current)
        if self.compatible:
            return f"embedder changed since indexing ({change}), vectors agree (cos {self.cosine:.4f})"
        return (f"embedder changed since indexing ({change}) and vectors disagree (cos {self.cosine:.4f} < "
                f"{AGREEMENT_THRESHOLD} over {self.sample} chunks): dense and hybrid search are refused, BM25 "
                f"still serves; run `mighty index reembed {name}` to re-embed the collection")


def stale(shares: Sequence[EmbedderShare], current: str | None) -> list[str]:
    """Known fingerprints of live vectors that differ from `current` (none when `current` is unknown)."""
    if current is None:
        return []
    return [s.fingerprint for s in shares if s.fingerprint and s.fingerprint != current and s.chunks]


def ingest_conflict(name: str, shares: Sequence[EmbedderShare], current: str | None,
                    measured: Agreement | None = None) -> EmbedderChanged | None:
    """The error for ingesting with `current` into a collection whose live vectors another embedder
    made (`measured`: how the stored vectors agreed with it, when that could be measured)."""
    old = stale(shares, current)
    if not old:
        return None
    how = (f"stored and new vectors agree only at cos {measured.cosine:.4f} < {AGREEMENT_THRESHOLD}"
           if measured is not None else "new vectors would not be comparable with the stored ones")
    return EmbedderChanged(
        f"collection {name!r} was indexed with another embedder ({describe_change(old[0], str(current))}); "
        f"{how}, so nothing was added. Run `mighty index reembed {name}` to re-embed it with the current "
        f"embedder, then add the documents again")


def measure(segments: Sequence, live: Sequence[np.ndarray | None], encode: Callable[[list[str]], np.ndarray],
            include_title: bool, stored: str, current: str, sample: int = SAMPLE_CHUNKS,
            seed: int = SAMPLE_SEED) -> Agreement | None:
    """Re-embed a seeded sample of the live rows `stored` wrote and compare with their stored vectors;
    None when no live row carries that fingerprint."""
    pools: list[tuple[int, np.ndarray]] = []
    for position, (segment, mask) in enumerate(zip(segments, live)):
        for fingerprint, start, end in run_ranges(segment.embedder_runs):
            if fingerprint == stored:
                rows = np.arange(start, end)
                pools.append((position, rows if mask is None else rows[mask[start:end].astype(bool)]))
    sizes = np.asarray([len(rows) for _, rows in pools], dtype=np.int64)
    total = int(sizes.sum())
    if not total:
        return None
    picks = np.sort(np.random.default_rng(seed).choice(total, size=min(sample, total), replace=False))
    bounds = np.cumsum(sizes)
    chunks, vectors = [], []
    for pick in picks:
        index = int(np.searchsorted(bounds, pick, side="right"))
        position, rows = pools[index]
        row = int(rows[pick - (bounds[index] - sizes[index])])
        segment = segments[position]
        chunks.append(segment.store.chunks([row])[row])
        vectors.append(np.asarray(segment.dense.vectors[row], dtype=np.float32))
    fresh = np.asarray(encode(embedding_texts(chunks, include_title)), dtype=np.float32)
    old = np.stack(vectors)
    if fresh.shape != old.shape:
        return Agreement(stored, current, 0.0, len(chunks))
    norms = np.linalg.norm(old, axis=1) * np.linalg.norm(fresh, axis=1)
    cosines = (old * fresh).sum(axis=1) / np.maximum(norms, 1e-12)
    return Agreement(stored, current, round(float(cosines.mean()), 6), len(chunks))


class AgreementCache:
    """A collection's verdicts, one measurement per (stored, current) fingerprint pair per process."""

    def __init__(self) -> None:
        self._measured: dict[tuple[str, str], Agreement | None] = {}
        self._checked: tuple[int, str] | None = None  # (generation, current) already found compatible
        self._lock = threading.Lock()

    def verdicts(self, snapshot, current: str | None, encode: Callable[[list[str]], np.ndarray],
                 include_title: bool) -> list[Agreement]:
        """Agreements for every stale fingerprint of `snapshot` (measured on first need). A snapshot
        whose segments cannot be walked here (remote shards) is not measured."""
        out = []
        for stored in stale(snapshot.manifest.embedder_shares(), current):
            key = (stored, str(current))
            with self._lock:
                if key not in self._measured:
                    try:
                        segments, live = snapshot.segments, snapshot.live
                    except RuntimeError:
                        continue
                    self._measured[key] = measure(segments, live, encode, include_title, stored, str(current))
                found = self._measured[key]
            if found is not None:
                out.append(found)
        return out

    def disagreement(self, snapshot, current: str, encode: Callable[[list[str]], np.ndarray],
                     include_title: bool) -> tuple[bool, Agreement | None]:
        """(whether every stale fingerprint of `snapshot` measurably agrees with `current`, the first
        disagreeing verdict). A fingerprint that could not be measured (remote shards) does not agree."""
        found = {v.stored: v for v in self.verdicts(snapshot, current, encode, include_title)}
        worse = [v for v in found.values() if not v.compatible]
        agree = not worse and all(fp in found for fp in stale(snapshot.manifest.embedder_shares(), current))
        return agree, (worse[0] if worse else None)

    def require_dense(self, name: str, snapshot, current: Callable[[], str | None],
                      encode: Callable[[list[str]], np.ndarray], include_title: bool) -> None:
        """Raise `EmbedderIncompatible` when dense search over `snapshot` would compare unlike vectors.
        `current` is only called when some live vectors have a known fingerprint, so collections of
        unknown origin never load their embedder here."""
        if not any(s.fingerprint for s in snapshot.manifest.embedder_shares()):
            return
        fingerprint = current()
        if self._checked == (snapshot.generation, fingerprint):
            return
        for agreement in self.verdicts(snapshot, fingerprint, encode, include_title):
            if not agreement.compatible:
                raise EmbedderIncompatible(f"collection {name!r}: {agreement.describe(name)}")
        self._checked = (snapshot.generation, str(fingerprint))
