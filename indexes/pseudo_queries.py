"""Label-free pseudo-queries for fusion calibration: ways a user may ask for a chunk, made from it.

Why more than one style: which retriever is better depends on how a collection is queried as much
as on its text. On one author's essays, a removed sentence is found nearly as well by the
embedder as by BM25, but a bag of three remembered words five times better by BM25; a
calibration that only ever asks in sentences mixes in a retriever that is useless for keyword
search. A commit cannot know how users will query, so it measures each plausible style and
`indexes.calibration` gives each query the weight of the style its dense match resembles.

Styles (each from the same seeded sample of chunks):
- "sentence" (an inverse cloze test, after ORQA): one sentence of the chunk is the query and is
  *removed* from the chunk, its place filled by a copy of the chunk's own sentence closest in
  length (so the source is neither shorter than other chunks nor gains foreign words). The source
  must be recognised by its context, as for a real question, not by the verbatim sentence.
- "keywords" (the known-item simulation of Azzopardi, de Rijke & Balog, SIGIR 2007): 3-5 distinct
  terms drawn from the chunk with probability proportional to tf x idf (the salient words a user
  who remembers a passage types), in text order; the chunk stays whole, as a known item does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from indexes.analyzer import Analyzer
from indexes.config import BM25Config
from indexes.snapshot import ScoredRow, Snapshot

STYLES = ("sentence", "keywords")
_MIN_TERMS = 3
_BAG_LENGTHS = (3, 6)  # half-open: 3, 4 or 5 terms, as in Azzopardi et al.'s simulated queries
_SENTENCE = re.compile(r"[^.!?\n\u3002\uff01\uff1f\u061f]+[.!?\u3002\uff01\uff1f\u061f]*")
_WORD = re.compile(r"\w{2,}")


@dataclass(frozen=True)
class PseudoQuery:
    """A query and the chunk it was made from. `masked` is the text the source is scored as (its
    title is kept); None means the stored chunk itself, scored from the index."""

    style: str
    query: str
    doc_id: str
    segment: int
    row: int
    title: str
    masked: str | None


@dataclass(frozen=True)
class _Picked:
    doc_id: str
    segment: int
    row: int
    title: str
    text: str


def pseudo_queries(snapshot: Snapshot, analyzer: Analyzer, bm25: BM25Config, seed: int,
                   wanted: int) -> dict[str, list[PseudoQuery]]:
    """Up to `wanted` pseudo-queries per style from one seeded sample of chunks. The sentence style
    uses the generator seeded with `seed` exactly as before styles existed (the same chunks and
    sentences), the other styles generators of their own, so adding a style changes no other."""
    rng = np.random.default_rng(seed)
    found: dict[str, list[PseudoQuery]] = {"sentence": []}
    picked: list[_Picked] = []
    for chunk in _sample(snapshot, rng, wanted):
        cloze = _sentence_cloze(chunk, analyzer, rng)
        if cloze is not None:
            found["sentence"].append(cloze)
            picked.append(chunk)
            if len(picked) == wanted:
                break
    bags = np.random.default_rng([seed, 1])
    found["keywords"] = [q for chunk in picked
                         for q in [_keyword_bag(chunk, snapshot, analyzer, bm25, bags)] if q is not None]
    return found


def _sample(snapshot: Snapshot, rng: np.random.Generator, wanted: int):
    """Live chunks in a seeded random order, fetched `wanted` at a time (at most 4 x wanted)."""
    locations = [np.stack([np.full(len(rows), position), rows], axis=1)
                 for position, (segment, live) in enumerate(zip(snapshot.segments, snapshot.live))
                 for rows in [np.arange(segment.rows) if live is None else np.flatnonzero(live)]]
    flat = np.concatenate(locations) if locations else np.zeros((0, 2), dtype=np.int64)
    order = rng.permutation(len(flat))
    for start in range(0, min(len(order), wanted * 4), wanted):
        picks = [ScoredRow(int(flat[i][0]), int(flat[i][1]), 0.0) for i in order[start:start + wanted]]
        for pick, chunk in zip(picks, snapshot.chunks(picks)):
            yield _Picked(chunk.doc_id, pick.segment, pick.row, chunk.title, chunk.text)


def _sentence_cloze(chunk: _Picked, analyzer: Analyzer, rng: np.random.Generator) -> PseudoQuery | None:
    sentences = [m.group().strip() for m in _SENTENCE.finditer(chunk.text) if m.group().strip()]
    if len(sentences) < 2:
        return None
    eligible = [i for i, s in enumerate(sentences) if len(analyzer.terms(s)) >= _MIN_TERMS]
    if not eligible:
        return None
    chosen = eligible[int(rng.integers(len(eligible)))]
    if len(analyzer.terms(" ".join(s for i, s in enumerate(sentences) if i != chosen))) < _MIN_TERMS:
        return None
    query = sentences[chosen]
    masked = " ".join(_replacement(sentences, chosen) if i == chosen else s for i, s in enumerate(sentences))
    return PseudoQuery("sentence", query, chunk.doc_id, chunk.segment, chunk.row, chunk.title, masked)


def _replacement(sentences: list[str], chosen: int) -> str:
    """What fills the query sentence's place: a copy of the chunk's own sentence closest in length.
    Simply deleting it would leave the source shorter than every other chunk, and both BM25's
    length normalisation and an embedder that reads little of the text would then find it by its
    length alone; a sentence from another document would instead pull its embedding off-topic and
    hand BM25 (which ignores the foreign words) an edge it does not have on real questions."""
    query = sentences[chosen]
    others = [s for i, s in enumerate(sentences) if i != chosen]
    return min(others, key=lambda s: (abs(len(s) - len(query)), s))


def _keyword_bag(chunk: _Picked, snapshot: Snapshot, analyzer: Analyzer, bm25: BM25Config,
                 rng: np.random.Generator) -> PseudoQuery | None:
    """3-5 distinct salient terms of the chunk (p ~ tf x idf with the collection's statistics),
    written as the chunk writes them, in the order they first appear."""
    terms, weights = snapshot.bm25_query(analyzer, bm25, chunk.text)  # idf x count in the chunk
    if len(terms) < _MIN_TERMS or not np.all(np.isfinite(weights)) or weights.sum() <= 0:
        return None
    length = min(int(rng.integers(*_BAG_LENGTHS)), int((weights > 0).sum()))
    if length < _MIN_TERMS:
        return None
    picked = rng.choice(len(terms), size=length, replace=False, p=weights / weights.sum())
    surface = _surface_forms(chunk.text, analyzer.for_document(chunk.text))
    words = sorted((surface.get(terms[i], (len(chunk.text), terms[i])) for i in picked))
    return PseudoQuery("keywords", " ".join(w for _, w in words), chunk.doc_id, chunk.segment, chunk.row,
                       chunk.title, None)


def _surface_forms(text: str, analyzer: Analyzer) -> dict[str, tuple[int, str]]:
    """term -> (first position, the word that gives it): a query must be written in words, and the
    query analyzer stems them back to the same terms. Terms no single word gives (CJK bigrams of a
    longer run) are written as themselves."""
    forms: dict[str, tuple[int, str]] = {}
    for match in _WORD.finditer(text.lower()):
        found = analyzer.terms(match.group())
        if len(found) == 1:
            forms.setdefault(found[0], (match.start(), match.group()))
    return forms
