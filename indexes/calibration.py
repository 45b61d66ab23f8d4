"""Label-free calibration of hybrid fusion, measured on each collection when it is committed.

Why: a fixed mix of BM25 and dense scores is, in effect, tuned to whichever corpus it was chosen
on. On text in a language the embedder does not know, dense retrieval is noise and every bit of
weight on it costs quality; on entity-style corpora dense retrieval is far ahead of BM25 and a
60/40 mix loses to it. The collection itself can tell which case it is in, without any labels.
What it cannot tell is how it will be queried: on one author's essays a removed sentence is found
nearly as well by the embedder as by BM25, a bag of three remembered words five times better by BM25.
So it measures two query styles (`indexes.pseudo_queries`) and lets each query's own dense match
say which it resembles.

Method:
1. From a seeded sample of chunks (seed and sample size are collection settings, so the same
   content always gives the same calibration) make pseudo-queries of two styles: a sentence removed
   from its chunk (an inverse cloze test; the source is scored masked, so it must be recognised by
   its context) and a known-item keyword bag (3-5 salient words of the chunk; the source is whole).
2. Score each source with both retrievers as the index would, pooled with both retrievers' top
   candidates from every *other* document, each scored by both.
3. Run the query-time fusion function (`indexes.fusion.fuse`, per-query confidence weighting as
   configured) over each pool for dense weights 0, 0.1, ..., 1 (the ends are the single
   retrievers) with min-max or z-score normalisation; score each by the nDCG@10 of the source.
4. Sentence weight and normalisation: the best setting on sentences, smoothed over neighbouring
   weights (1-2-1, which damps the noise of a few hundred pseudo-queries); ties go to the setting
   closest to the uncalibrated default. Keyword weight: the best weight on keyword bags under the
   same normalisation, ties going to the better single retriever there.
5. Record each style's mean best dense score. At query time (`query_weight`) a query whose best
   dense match scores like a typical sentence gets the sentence weight, one no better than a
   typical keyword bag the keyword weight, linearly in between (`indexes.fusion.match_weight`).
   An embedder that matches keyword bags as closely as sentences gives no contrast: every query
   then gets the sentence weight.
6. Ties toward dense for well-matched queries. A sentence curve is often flat within its sampling
   error over a wide range of weights (e5-small on MS MARCO: 0.3-0.9 at 200 pseudo-queries), and
   the smoothed argmax then lands anywhere in it. The weights above the chosen one whose paired
   nDCG@10 difference from it stays within two standard errors are recorded (`dense_weight_max`,
   capped at the last mix, 0.9, so a tie never turns hybrid into dense alone); a query matched
   better than the typical sentence pseudo-query moves up that range, reaching its top one standard
   deviation of the sentences' best dense scores above their mean (`indexes.fusion.tie_weight`).
   Queries matched that well are the ones the pseudo-queries say least about (of MS MARCO's
   questions 93% (MiniLM) and 98% (e5) are above the sentence mean, 21% and 67% above mean + 1 sd),
   and among settings the collection cannot tell apart the one leaning on the retriever that
   matches them closely is the natural pick. It is a tie-break, not evidence: with five times
   more pseudo-queries the tied range narrows and e5 on MS MARCO falls short again. Guard: no
   range is recorded when the embedder is dominated on known items, i.e. its nDCG@10 on keyword
   bags is more than two standard errors below half of BM25's (pg-essays 0.26-0.30 of BM25, Arabic
   under MiniLM 0.18-0.24; MS MARCO 0.46-0.61, docs 0.50-0.60): there a closely matched query is
   not evidence that dense is right (on pg-essays' own natural questions it costs up to 0.02).
7. An embedder that wins nothing the calibration measured weighs in only beyond every keyword bag.
   When it is dominated on known items (the guard of step 6) and no better than BM25 on the
   sentence pseudo-queries either, the ramp of step 5 is not used: a query gets the keyword weight
   unless its best dense score is above the highest any keyword bag reached (`dominated_top`), and
   the sentence weight above it. The ramp assumes a query matched a little better than a typical
   keyword bag is partly sentence-like; where the embedder cannot tell the chunks apart by their
   salient words, half of all keyword-like queries sit above the keyword mean by chance, and each
   bit of dense weight they get costs (pg-essays known items: -0.015 with the ramp, 0.000 without).
   Requiring the sentence loss too keeps the step away from corpora where dense is weak only on
   rare words (entity abstracts full of names) but strong on descriptions, where real queries
   favour it. The guard's share: dense's keyword-bag nDCG@10 over BM25's falls in two clusters
   over seeds 0-4, 0.18-0.30 (the essays, Arabic under MiniLM: an embedder that cannot read the
   text apart) and 0.46-0.96 (MS MARCO, the docs, e5-small); dominated means significantly (two
   paired standard errors) below 0.4, between them (z -3.5 to -9 for the first cluster, +1.9
   and above for the second).
Why not choose one setting for both styles, e.g. the one with the least worst-case regret against
the better single retriever per style: keyword bags favour BM25 on every corpus measured (the
words are in the source by construction; dense's nDCG@10 on them is 2-4 times lower), so that setting is
BM25 alone, also on MS MARCO, whose real queries (keyword-like ones included) favour dense; and the
two corpora's pseudo-query evidence is alike, so no single setting serves both. The query's best
dense score is what differs: MS MARCO's questions are matched more closely than its sentence
pseudo-queries, the essays' remembered words no better than its keyword bags.
Why not simply keep the better single retriever when mixing does not clearly win: the pseudo-
queries rank the two inputs reliably only when they differ a lot (sentences put dense ahead on
this project's docs, where real questions favour BM25), so a mix is the hedge. A retriever that
never finds the source earns weight 0 in both styles. The result is stored in the generation's
manifest and reported by `mighty index stats`; benchmarks/RESULTS.md has the measurements.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from indexes.analyzer import Analyzer
from indexes.config import CollectionConfig
from indexes.embedders import Embedder, encode_queries
from indexes.fusion import FusionParams, fuse, match_weight, tie_weight
from indexes.pseudo_queries import PseudoQuery, pseudo_queries
from indexes.snapshot import Snapshot
from indexes.sparse import bm25_of_terms

GRID = tuple(i / 10 for i in range(11))
NORMALISATIONS = ("minmax", "zscore")
MIN_CHUNKS = 50  # below this a collection keeps the configured defaults: too few to measure
MIN_PROBES = 20
METHOD = ("sentence + keyword pseudo-queries, weight by dense match, ties toward dense when matched closely, "
          "an embedder that wins nothing only beyond every keyword bag")
TIE_Z = 2.0  # standard errors within which two settings' pseudo-query nDCG@10 are called tied
KNOWN_ITEM_SHARE = 0.4  # dense must reach this share of BM25's nDCG@10 on keyword bags (steps 6-7)


@dataclass(frozen=True)
class FusionCalibration:
    """What calibration chose, and the pseudo-query evidence it chose it on."""

    dense_weight: float  # for queries the embedder matches as well as a typical sentence
    normalisation: str
    adaptive: bool
    probes: dict[str, int]  # pseudo-queries per style
    seed: int
    keyword_weight: float | None = None  # for queries matched no better than a typical keyword bag
    dense_top: dict[str, float] = field(default_factory=dict)  # style -> mean best dense score
    ndcg: dict[str, dict[str, float]] = field(default_factory=dict)  # style -> bm25, dense, hybrid, default
    curve: dict[str, list[float]] = field(default_factory=dict)  # style -> nDCG@10 per dense weight in GRID
    method: str = METHOD
    dense_weight_max: float | None = None  # the top of the weights tied with dense_weight on sentences
    dense_top_spread: dict[str, float] = field(default_factory=dict)  # style -> std of the best dense scores
    dominated_top: float | None = None  # an embedder that wins nothing: the best keyword bag's dense score (step 7)

    def weight(self, top: float) -> float:
        """The dense weight of a query whose best dense score is `top` (`indexes.fusion.match_weight`,
        then `indexes.fusion.tie_weight`)."""
        return query_weight(self.to_dict(), top)

    def params(self, top: float) -> FusionParams:
        return FusionParams(self.weight(top), self.normalisation, self.adaptive)  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "FusionCalibration":
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})


def query_weight(settings: dict, top: float | None) -> float:
    """The dense weight a query gets from stored fusion settings (a calibration as `index stats`
    shows it, or the configured ones): interpolated by its best dense score when the calibration
    measured both styles, and moved up the tied range when it is matched more closely than a
    typical sentence; for an embedder that won nothing in calibration, the keyword weight unless
    matched beyond every keyword bag; the single calibrated or configured weight otherwise."""
    tops = settings.get("dense_top") or {}
    if top is None or settings.get("keyword_weight") is None or "sentence" not in tops:
        return float(settings["dense_weight"])
    dominated = settings.get("dominated_top")
    if dominated is not None:  # step 7: no ramp and no tie range for an embedder that wins nothing
        return float(settings["keyword_weight"] if top <= dominated else settings["dense_weight"])
    weight = match_weight(top, tops.get("keywords"), tops["sentence"], settings["keyword_weight"],
                          settings["dense_weight"])
    spread = (settings.get("dense_top_spread") or {}).get("sentence")
    if settings.get("dense_weight_max") is None or spread is None:  # stored before ties were measured
        return weight
    return tie_weight(top, tops["sentence"], spread, weight, settings["dense_weight_max"])


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
class Evidence:
    """One style's pseudo-queries as measured: each query's pooled scores (source first), its best
    dense score, and the source's nDCG@10 under every fixed setting: gains[normalisation, weight, query]."""

    pools: list[dict[str, np.ndarray]]
    tops: np.ndarray
    gains: np.ndarray


def calibrate(snapshot: Snapshot, config: CollectionConfig, analyzer: Analyzer,
              embedder: Embedder) -> FusionCalibration | None:
    """Measure fusion settings on the collection's own chunks; None when it is too small."""
    fusion = config.fusion
    if snapshot.manifest.chunks < MIN_CHUNKS:
        return None
    queries = pseudo_queries(snapshot, analyzer, config.bm25, fusion.calibration_seed, fusion.calibration_samples)
    queries = {style: found for style, found in queries.items() if len(found) >= MIN_PROBES}
    if "sentence" not in queries:
        return None
    return choose(measure(snapshot, config, analyzer, embedder, queries), fusion.dense_weight, fusion.adaptive,
                  fusion.calibration_seed)


def measure(snapshot: Snapshot, config: CollectionConfig, analyzer: Analyzer, embedder: Embedder,
            queries: dict[str, list[PseudoQuery]]) -> dict[str, Evidence]:
    """Every style's pseudo-queries run through both retrievers and every fixed fusion setting."""
    flat = [q for found in queries.values() for q in found]
    vectors = encode_queries(embedder, [q.query for q in flat])
    masked = [i for i, q in enumerate(flat) if q.masked is not None]
    title = config.embedder.include_title
    texts = [f"{flat[i].title}\n{flat[i].masked}" if title and flat[i].title else flat[i].masked for i in masked]
    sources = dict(zip(masked, embedder.encode(texts))) if texts else {}
    pools = [_probe(snapshot, config, analyzer, q, vectors[i], sources.get(i)) for i, q in enumerate(flat)]
    found, start = {}, 0
    for style, items in queries.items():
        mine, start = pools[start:start + len(items)], start + len(items)
        gains = np.asarray([[[_gain(fuse(p, FusionParams(w, n, config.fusion.adaptive))[0]) for p in mine]
                             for w in GRID] for n in NORMALISATIONS])
        found[style] = Evidence(mine, np.asarray([float(p["dense"].max()) for p in mine]), gains)
    return found


def _probe(snapshot: Snapshot, config: CollectionConfig, analyzer: Analyzer, query: PseudoQuery,
           vector: np.ndarray, masked: np.ndarray | None) -> dict[str, np.ndarray]:
    """Both retrievers' scores over the pool; index 0 is the source (as masked, or as stored), the
    rest are the top candidates of every *other* document (the source's own other chunks are out)."""
    bm25 = config.bm25
    terms, weights = snapshot.bm25_query(analyzer, bm25, query.query)
    entry = snapshot.segments[query.segment].store.document(query.doc_id)
    rows = range(entry.first_row, entry.first_row + entry.rows) if entry is not None else []
    own = {(query.segment, query.row)} | {(query.segment, r) for r in rows}
    k = config.fusion.candidates + len(own)
    lists = {"bm25": snapshot.bm25_top_k(bm25, terms, weights, k),
             "dense": snapshot.dense(vector, k, config.dense.ef_search)}
    pool = [p for p in dict.fromkeys((h.segment, h.row) for hits in lists.values() for h in hits) if p not in own]
    _, raw = snapshot.pooled(lists, bm25, terms, weights, vector, [(query.segment, query.row)] + pool)
    scores = {name: np.asarray(raw[name], dtype=np.float64) for name in ("bm25", "dense")}
    if masked is not None and query.masked is not None:
        source_terms = (analyzer.terms(query.title) * bm25.title_weight if query.title else []) + \
            analyzer.terms(query.masked)
        scores["bm25"][0] = bm25_of_terms(source_terms, terms, weights, bm25.k1, bm25.b,
                                          snapshot.bm25_stats(bm25).avgdl)
        scores["dense"][0] = float(masked @ vector)
    return scores


def _gain(scores: np.ndarray) -> float:
    """nDCG@10 of the source (index 0) when candidates are ordered by `scores`; ties split evenly."""
    others = scores[1:]
    rank = 1 + float((others > scores[0]).sum()) + 0.5 * float((others == scores[0]).sum())
    return 1.0 / math.log2(rank + 1) if rank <= 10 else 0.0


def choose(evidence: dict[str, Evidence], default_weight: float, adaptive: bool, seed: int) -> FusionCalibration:
    """The sentence style's setting (smoothed best nDCG@10; ties go to the setting closest to the
    configured default), the keyword style's weight under the same normalisation (ties go to the
    better single retriever on keywords), each style's mean best dense score, and either the range
    of weights tied with the sentence weight (step 6) or, for an embedder that wins nothing, the
    best dense score no keyword bag exceeded (step 7)."""
    curves = {style: e.gains.mean(axis=2) for style, e in evidence.items()}  # [normalisation, weight]
    n, w = _best(curves["sentence"], lambda n, w: abs(GRID[w] - default_weight) + n)
    normalisation, weight, keyword_weight = NORMALISATIONS[n], GRID[w], None
    if "keywords" in curves:
        bags = curves["keywords"][n:n + 1]
        toward = 0.0 if bags[0, 0] >= bags[0, -1] else 1.0
        keyword_weight = GRID[_best(bags, lambda _, w: abs(GRID[w] - toward))[1]]
    sentence, keywords = evidence["sentence"].gains[n], evidence.get("keywords")
    competent = _competent(keywords, n)
    tied = GRID[_tied_above(sentence, w)] if competent else weight
    wins_nothing = keywords is not None and not competent and sentence[-1].mean() <= sentence[0].mean()
    dominated = float(keywords.tops.max()) if wins_nothing else None
    settings = {"dense_weight": weight, "keyword_weight": keyword_weight, "dense_weight_max": tied,
                "dominated_top": dominated,
                "dense_top": {style: float(e.tops.mean()) for style, e in evidence.items()},
                "dense_top_spread": {style: float(e.tops.std()) for style, e in evidence.items()}}
    ndcg = {}
    for style, e in evidence.items():
        hybrid = np.mean([_gain(fuse(p, FusionParams(query_weight(settings, top), normalisation, adaptive))[0])
                          for p, top in zip(e.pools, e.tops)])
        c = curves[style]
        ndcg[style] = {"bm25": c[0, 0], "dense": c[0, -1], "hybrid": hybrid,
                       "default": float(np.interp(default_weight, GRID, c[0]))}
    return FusionCalibration(weight, normalisation, adaptive, {s: len(e.pools) for s, e in evidence.items()}, seed,
                             keyword_weight, {s: round(v, 4) for s, v in settings["dense_top"].items()},
                             {s: {k: round(float(v), 4) for k, v in d.items()} for s, d in ndcg.items()},
                             {s: [round(float(v), 4) for v in c[n]] for s, c in curves.items()}, METHOD, tied,
                             {s: round(v, 4) for s, v in settings["dense_top_spread"].items()},
                             dominated)


def _tied_above(gains: np.ndarray, chosen: int) -> int:
    """The highest weight index above `chosen`, up to the last mix, reached through weights whose
    paired per-query nDCG@10 difference from `chosen` stays within TIE_Z standard errors
    (gains[weight, query])."""
    top = chosen
    while top < len(GRID) - 2 and _not_below(gains[top + 1] - gains[chosen]):
        top += 1
    return top


def _competent(keywords: "Evidence | None", n: int) -> bool:
    """Whether dense is not dominated on known items: its nDCG@10 on keyword bags is not more than
    TIE_Z standard errors below KNOWN_ITEM_SHARE of BM25's (paired per query). No keyword bags, no claim."""
    if keywords is None:
        return False
    gains = keywords.gains[n]
    return _not_below(gains[-1] - KNOWN_ITEM_SHARE * gains[0])


def _not_below(differences: np.ndarray) -> bool:
    """A paired mean difference not significantly below zero: mean >= -TIE_Z standard errors."""
    if len(differences) < 2:
        return False
    error = float(differences.std(ddof=1)) / math.sqrt(len(differences))
    return float(differences.mean()) >= -TIE_Z * error - 1e-12


def _best(curves: np.ndarray, distance) -> tuple[int, int]:
    """(normalisation, weight) index of the best 1-2-1 smoothed nDCG; exact ties (to 1e-9) go to the
    smallest `distance(normalisation, weight)`."""
    return max(((n, w) for n in range(curves.shape[0]) for w in range(len(GRID))),
               key=lambda nw: (round(float(_smooth(curves[nw[0]])[nw[1]]), 9), -distance(*nw)))


def _smooth(curve: np.ndarray) -> np.ndarray:
    """1-2-1 smoothing over neighbouring weights (ends repeated): a weight wins only if its
    neighbourhood is good too, which damps the noise of a few hundred pseudo-queries."""
    padded = np.concatenate([[curve[0]], curve, [curve[-1]]])
    return (padded[:-2] + 2 * padded[1:-1] + padded[2:]) / 4
