"""Label-free calibration of hybrid fusion, measured on each collection when it is committed.

Why: a fixed mix of BM25 and dense scores is, in effect, tuned to whichever corpus it was chosen
on. On text in a language the embedder does not know, dense retrieval is noise and every bit of
weight on it costs quality; on entity-style corpora dense retrieval is far ahead of BM25 and a
60/40 mix loses to it. The collection itself can tell which case it is in, without any labels.

Method (an inverse cloze test, after the ORQA pre-training task):
1. Sample chunks with a seeded generator (seed and sample size are collection settings, so the
   same content always gives the same calibration).
2. From each chunk take one sentence as a pseudo-query and *remove it* from the chunk, filling its
   place with a copy of the chunk's own sentence closest in length (so the masked chunk is not
   recognisable by being shorter than the rest, and gains no foreign words). The masked chunk (title + text) stands in for
   the source: a retriever has to recognise the passage a sentence came from by its context, as it
   must for a real question, instead of matching the sentence verbatim (which would hand BM25 a
   win it does not have on real queries).
3. Score the masked source with each retriever as the index would (BM25 with the collection's
   statistics; dense with the collection's embedder) and pool it with both retrievers' top
   candidates from every *other* document, each scored by both retrievers.
4. Run the query-time fusion function (`indexes.fusion.fuse`, per-query confidence weighting as
   configured) over each pool for every candidate setting: dense weight 0, 0.1, ..., 1 (the ends
   are the single retrievers) with min-max or z-score normalisation; score each by the nDCG@10 of
   the source (1 / log2(1 + rank), 0 beyond rank 10).
5. Keep the setting whose score, smoothed over neighbouring weights (1-2-1), is best: a weight is
   chosen only if its neighbourhood is good too, which damps sampling noise. Ties go to the
   setting closest to the uncalibrated default.
Why not simply keep the better single retriever when mixing does not clearly win: the pseudo-
queries rank the two inputs reliably only when they differ a lot (they put dense ahead on this
project's docs, where real questions favour BM25), so a mix is the hedge; the mix moves to a single
retriever only when the other one adds nothing even on its best weights.
A retriever that never finds the source earns weight 0, because any weight on it only reshuffles
the other's ranking; two retrievers of similar strength earn a mix. The result is stored in the
generation's manifest and reported by `mighty index stats`.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from indexes.analyzer import Analyzer
from indexes.config import CollectionConfig
from indexes.embedders import Embedder, encode_queries
from indexes.fusion import FusionParams, fuse
from indexes.snapshot import ScoredRow, Snapshot
from indexes.sparse import bm25_of_terms

GRID = tuple(i / 10 for i in range(11))
NORMALISATIONS = ("minmax", "zscore")
MIN_CHUNKS = 50  # below this a collection keeps the configured defaults: too few to measure
MIN_PROBES = 20
_MIN_TERMS = 3
_SENTENCE = re.compile(r"[^.!?\n\u3002\uff01\uff1f\u061f]+[.!?\u3002\uff01\uff1f\u061f]*")


@dataclass(frozen=True)
class FusionCalibration:
    """What calibration chose, and the pseudo-query evidence it chose it on."""

    dense_weight: float
    normalisation: str
    adaptive: bool
    probes: int
    seed: int
    ndcg: dict[str, float] = field(default_factory=dict)  # bm25, dense, hybrid (chosen), default
    curve: list[float] = field(default_factory=list)  # nDCG@10 per dense weight in GRID, chosen setting
    method: str = "inverse-cloze"

    def params(self) -> FusionParams:
        return FusionParams(self.dense_weight, self.normalisation, self.adaptive)  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "FusionCalibration":
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})


def stamp(found: FusionCalibration | None, manifest) -> dict | None:
    """A fresh calibration as stored in a manifest, with what it was measured on: the generation and
    its chunk count, and the chunks changed since (none yet), which decide when to measure again."""
    if found is None:
        return None
    return found.to_dict() | {"calibrated_generation": manifest.generation, "calibrated_chunks": manifest.chunks,
                              "changed_chunks": 0}


def keep_calibration(stored: dict | None, changed: int, fraction: float) -> dict | None:
    """The stored calibration carried into the next generation, with `changed` more chunks counted
    against it, while the total stays within `fraction` of the chunks it was measured on; None when
    it must be measured again (too much changed, none stored, or one stored before this bookkeeping)."""
    if not stored or "calibrated_chunks" not in stored:
        return None
    total = int(stored.get("changed_chunks", 0)) + changed
    if total > fraction * int(stored["calibrated_chunks"]):
        return None
    return stored | {"changed_chunks": total}


@dataclass
class _Cloze:
    doc_id: str
    segment: int
    title: str
    sentences: list[str]
    chosen: int  # the sentence that becomes the query

    @property
    def query(self) -> str:
        return self.sentences[self.chosen]

    def masked(self, replacement: str) -> str:
        return " ".join(replacement if i == self.chosen else s for i, s in enumerate(self.sentences))


def calibrate(snapshot: Snapshot, config: CollectionConfig, analyzer: Analyzer,
              embedder: Embedder) -> FusionCalibration | None:
    """Measure fusion settings on the collection's own chunks; None when it is too small."""
    fusion = config.fusion
    if snapshot.manifest.chunks < MIN_CHUNKS:
        return None
    rng = np.random.default_rng(fusion.calibration_seed)
    clozes = _sample(snapshot, analyzer, rng, fusion.calibration_samples)
    if len(clozes) < MIN_PROBES:
        return None
    return _choose(_probes(snapshot, config, analyzer, embedder, clozes), fusion.dense_weight, fusion.adaptive,
                   fusion.calibration_seed)


def _probes(snapshot: Snapshot, config: CollectionConfig, analyzer: Analyzer, embedder: Embedder,
            clozes: list[_Cloze]) -> list[dict[str, np.ndarray]]:
    masked = [c.masked(_replacement(c)) for c in clozes]
    title = config.embedder.include_title
    queries = encode_queries(embedder, [c.query for c in clozes])
    sources = embedder.encode([f"{c.title}\n{m}" if title and c.title else m for c, m in zip(clozes, masked)])
    return [_probe(snapshot, config, analyzer, c, m, queries[i], sources[i]) for i, (c, m) in enumerate(zip(clozes, masked))]


def _sample(snapshot: Snapshot, analyzer: Analyzer, rng: np.random.Generator,
            wanted: int) -> list[_Cloze]:
    """Seeded chunks turned into (sentence, chunk without it) pairs."""
    locations = [np.stack([np.full(len(rows), position), rows], axis=1)
                 for position, (segment, live) in enumerate(zip(snapshot.segments, snapshot.live))
                 for rows in [np.arange(segment.rows) if live is None else np.flatnonzero(live)]]
    flat = np.concatenate(locations) if locations else np.zeros((0, 2), dtype=np.int64)
    order = rng.permutation(len(flat))
    clozes: list[_Cloze] = []
    for start in range(0, min(len(order), wanted * 4), wanted):
        picks = [ScoredRow(int(flat[i][0]), int(flat[i][1]), 0.0) for i in order[start:start + wanted]]
        for pick, chunk in zip(picks, snapshot.chunks(picks)):
            cloze = _cloze(chunk.doc_id, pick.segment, chunk.title, chunk.text, analyzer, rng)
            if cloze is not None:
                clozes.append(cloze)
                if len(clozes) == wanted:
                    return clozes
    return clozes


def _cloze(doc_id: str, segment: int, title: str, text: str, analyzer: Analyzer,
           rng: np.random.Generator) -> _Cloze | None:
    sentences = [m.group().strip() for m in _SENTENCE.finditer(text) if m.group().strip()]
    if len(sentences) < 2:
        return None
    eligible = [i for i, s in enumerate(sentences) if len(analyzer.terms(s)) >= _MIN_TERMS]
    if not eligible:
        return None
    chosen = eligible[int(rng.integers(len(eligible)))]
    if len(analyzer.terms(" ".join(s for i, s in enumerate(sentences) if i != chosen))) < _MIN_TERMS:
        return None
    return _Cloze(doc_id, segment, title, sentences, chosen)


def _replacement(cloze: _Cloze) -> str:
    """What fills the query sentence's place: a copy of the chunk's own sentence closest in length.
    Simply deleting it would leave the source shorter than every other chunk, and both BM25's
    length normalisation and an embedder that reads little of the text would then find it by its
    length alone; a sentence from another document would instead pull its embedding off-topic and
    hand BM25 (which ignores the foreign words) an edge it does not have on real questions."""
    others = [s for i, s in enumerate(cloze.sentences) if i != cloze.chosen]
    return min(others, key=lambda s: (abs(len(s) - len(cloze.query)), s))


def _probe(snapshot: Snapshot, config: CollectionConfig, analyzer: Analyzer, cloze: _Cloze, masked_text: str,
           query: np.ndarray, masked: np.ndarray) -> dict[str, np.ndarray]:
    """Both retrievers' scores over the pool; index 0 is the masked source, the rest are the top
    candidates of every other document."""
    bm25 = config.bm25
    terms, weights = snapshot.bm25_query(analyzer, bm25, cloze.query)
    entry = snapshot.segments[cloze.segment].store.document(cloze.doc_id)
    own = set() if entry is None else {(cloze.segment, r) for r in range(entry.first_row, entry.first_row + entry.rows)}
    k = config.fusion.candidates + len(own)
    lists = {"bm25": snapshot.bm25_top_k(bm25, terms, weights, k),
             "dense": snapshot.dense(query, k, config.dense.ef_search)}
    pool = [p for p in dict.fromkeys((h.segment, h.row) for hits in lists.values() for h in hits) if p not in own]
    _, raw = snapshot.pooled(lists, bm25, terms, weights, query, pool)
    masked_terms = (analyzer.terms(cloze.title) * bm25.title_weight if cloze.title else []) + analyzer.terms(masked_text)
    source = {"bm25": bm25_of_terms(masked_terms, terms, weights, bm25.k1, bm25.b,
                                    snapshot.bm25_stats(bm25).avgdl),
              "dense": float(masked @ query)}
    return {name: np.concatenate([[source[name]], raw[name]]) for name in ("bm25", "dense")}


def _gain(scores: np.ndarray) -> float:
    """nDCG@10 of the source (index 0) when candidates are ordered by `scores`; ties split evenly."""
    others = scores[1:]
    rank = 1 + float((others > scores[0]).sum()) + 0.5 * float((others == scores[0]).sum())
    return 1.0 / math.log2(rank + 1) if rank <= 10 else 0.0


def _choose(probes: list[dict[str, np.ndarray]], default_weight: float, adaptive: bool,
            seed: int) -> FusionCalibration:
    """The (dense weight, normalisation) whose pseudo-query nDCG@10, smoothed over neighbouring
    weights, is best; per-query adaptivity stays as configured."""
    curves = {normalisation: np.asarray([np.mean([_gain(fuse(p, FusionParams(w, normalisation, adaptive))[0])
                                                  for p in probes]) for w in GRID])
              for normalisation in NORMALISATIONS}

    def closeness(normalisation: str, weight: float) -> float:
        return abs(weight - default_weight) + (normalisation != "minmax")

    _, _, normalisation, weight = max(((round(float(_smooth(curve)[i]), 9), -closeness(n, w), n, w)
                                       for n, curve in curves.items() for i, w in enumerate(GRID)),
                                      key=lambda t: t[:2])
    chosen = curves[normalisation]
    ndcg = {"bm25": chosen[0], "dense": chosen[-1], "hybrid": chosen[GRID.index(weight)],
            "default": float(np.interp(default_weight, GRID, curves["minmax"]))}
    return FusionCalibration(weight, normalisation, adaptive, len(probes), seed,
                             {k: round(float(v), 4) for k, v in ndcg.items()}, [round(float(v), 4) for v in chosen])


def _smooth(curve: np.ndarray) -> np.ndarray:
    """1-2-1 smoothing over neighbouring weights (ends repeated): a weight wins only if its
    neighbourhood is good too, which damps the noise of a few hundred pseudo-queries."""
    padded = np.concatenate([[curve[0]], curve, [curve[-1]]])
    return (padded[:-2] + 2 * padded[1:-1] + padded[2:]) / 4
