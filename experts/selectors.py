"""The three knowledge selectors of Knowledge Card (Feng et al., ICLR 2024): relevance, pruning, factuality.

A small card writes fluent text that can be off-topic, long-winded or wrong. Each selector removes
one of those failures before anything reaches the large model, and reports what it removed so a
client can see why a card's knowledge was (or was not) used. All three work on embeddings from one
`encode` callable (normalised vectors, so a dot product is a cosine).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rag.citations import split_sentences

Encode = Callable[[Sequence[str]], np.ndarray]
CountTokens = Callable[[str], int]


class SelectorSettings(BaseModel):
    """Knobs of the three selectors; the server has defaults and a request may override them."""

    model_config = ConfigDict(extra="forbid")

    relevance_keep: int = Field(2, ge=1, le=16, description="passages kept per card, best first")
    relevance_min: float = Field(0.25, ge=-1, le=1, description="passages less similar to the query are dropped")
    prune_tokens: int = Field(120, ge=16, le=2000, description="token budget of one card's knowledge")
    factuality: bool = Field(True, description="drop sentences no evidence supports")
    factuality_min: float = Field(0.6, ge=-1, le=1, description="similarity an evidence text must reach")
    factuality_names: bool = Field(True, description="numbers and names in a sentence must also appear in "
                                                     "the evidence that supports it")
    novelty: bool = Field(True, description="with retrieved sources in the prompt, drop sentences those "
                                            "sources already support (they can only restate or distort them)")


@dataclass
class RelevanceReport:
    scores: list[float]
    kept: int
    dropped: int


@dataclass
class PruningReport:
    sentences_in: int
    sentences_kept: int
    duplicates: int
    tokens: int


@dataclass
class FactualityReport:
    checked: int
    supported: int
    unsupported: int
    dropped_sentences: list[str] = field(default_factory=list)
    support: list[float] = field(default_factory=list)


def select_relevant(query: str, passages: Sequence[str], encode: Encode,
                    settings: SelectorSettings) -> tuple[list[tuple[str, float]], RelevanceReport]:
    """The passages most similar to the query, best first, at most `relevance_keep`."""
    if not passages:
        return [], RelevanceReport([], 0, 0)
    vectors = encode([query, *passages])
    scores = vectors[1:] @ vectors[0]
    order = sorted(range(len(passages)), key=lambda i: -scores[i])
    kept = [(passages[i], float(scores[i])) for i in order if scores[i] >= settings.relevance_min]
    kept = kept[:settings.relevance_keep]
    return kept, RelevanceReport([round(float(s), 4) for s in scores], len(kept), len(passages) - len(kept))


def prune(query: str, passages: Sequence[str], encode: Encode, count_tokens: CountTokens,
          settings: SelectorSettings, duplicate_at: float = 0.92) -> tuple[list[str], PruningReport]:
    """Extractive pruning: the most query-relevant sentences that fit the budget, in reading order.

    Near-duplicate sentences (several passages often repeat one claim) are kept once.
    """
    sentences = [s for passage in passages for s in split_sentences(passage)]
    if not sentences:
        return [], PruningReport(0, 0, 0, 0)
    vectors = encode([query, *sentences])
    relevance = vectors[1:] @ vectors[0]
    chosen: list[int] = []
    used, duplicates = 0, 0
    for i in sorted(range(len(sentences)), key=lambda i: -relevance[i]):
        if chosen and float(np.max(vectors[1:][chosen] @ vectors[1 + i])) >= duplicate_at:
            duplicates += 1
            continue
        cost = count_tokens(sentences[i])
        if used + cost > settings.prune_tokens:
            continue
        chosen.append(i)
        used += cost
    kept = [sentences[i] for i in sorted(chosen)]
    return kept, PruningReport(len(sentences), len(kept), duplicates, used)


@dataclass
class NoveltyReport:
    checked: int
    restated: int
    dropped_sentences: list[str] = field(default_factory=list)


def drop_restated(sentences: Sequence[str], prompt_sources: Sequence[str], encode: Encode,
                  settings: SelectorSettings) -> tuple[list[str], NoveltyReport]:
    """Keep only the sentences that the prompt's own sources do not already support.

    Why: next to retrieved documents, a card sentence those documents support adds nothing the
    answerer does not read anyway, and when the card paraphrased a passage with one detail changed
    (a name swapped, a simile reworded) the checks above cannot tell, while the answerer follows and
    cites it (the losses measured on the pg-essays QA set with retrieval were of that kind). What a
    card can add next to retrieval is what the retrieved top-k lacks; that is what stays."""
    if not settings.novelty or not sentences or not prompt_sources:
        return list(sentences), NoveltyReport(len(sentences), 0)
    units = _evidence_units(prompt_sources)
    vectors = encode([*sentences, *units])
    support = (vectors[:len(sentences)] @ vectors[len(sentences):].T).max(axis=1)
    kept = [s for s, best in zip(sentences, support) if best < settings.factuality_min]
    dropped = [s for s, best in zip(sentences, support) if best >= settings.factuality_min]
    return kept, NoveltyReport(len(sentences), len(dropped), dropped)


def check_facts(sentences: Sequence[str], evidence: Sequence[str], encode: Encode,
                settings: SelectorSettings) -> tuple[list[str], FactualityReport]:
    """Keep a sentence only if some evidence text (a retrieved passage or one of its sentences) is
    similar enough to it; with no evidence at all nothing can be verified, so nothing is kept."""
    if not settings.factuality:
        return list(sentences), FactualityReport(len(sentences), len(sentences), 0)
    if not sentences:
        return [], FactualityReport(0, 0, 0)
    units = _evidence_units(evidence)
    if not units:
        return [], FactualityReport(len(sentences), 0, len(sentences), list(sentences), [0.0] * len(sentences))
    vectors = encode([*sentences, *units])
    similarity = vectors[:len(sentences)] @ vectors[len(sentences):].T
    support = similarity.max(axis=1)
    kept, dropped = [], []
    for i, sentence in enumerate(sentences):
        # The texts that carry the sentence's claim: similar enough, and close to the best match (a
        # text that only shares a name, less similar, must not vouch for a claim made elsewhere).
        floor = max(settings.factuality_min, float(support[i]) - CLAIM_MARGIN)
        backing = [units[j] for j in np.flatnonzero(similarity[i] >= floor)]
        grounded = bool(backing) and (not settings.factuality_names or _names_grounded(sentence, backing))
        (kept if grounded else dropped).append(sentence)
    return kept, FactualityReport(len(sentences), len(kept), len(dropped), dropped,
                                  [round(float(s), 4) for s in support])


CLAIM_MARGIN = 0.05  # how far below the best-matching evidence text a supporting text may be
_NUMBER = re.compile(r"\d[\d,.]*\d|\d")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")


# Capitalised only because they open a sentence: never taken for a name.
_SENTENCE_OPENERS = frozenset(
    "a an the this that these those it its he she they we you i his her their our my your there here "
    "in on at by for from with without to of as after before when while if although because since so "
    "but and or yet also however then thus many most some all every each one two no not".split())


def _names(sentence: str) -> set[str]:
    """Numbers and capitalised words: what a fluent but wrong sentence gets wrong.

    Embedding similarity alone scores "built in Rome in 1920" as close to "completed in 1889 in
    Paris"; requiring the names and numbers to occur in the supporting text catches that. The first
    word counts too unless it is a common sentence opener: "IBM showed ..." must be checked as
    much as "... shown by IBM"."""
    numbers = {n.strip(".,") for n in _NUMBER.findall(sentence)}
    words = _WORD.findall(sentence)
    names = {w.lower() for w in words[1:] if w[0].isupper()}
    if words and words[0][0].isupper() and words[0].lower() not in _SENTENCE_OPENERS:
        names.add(words[0].lower())
    return numbers | names


def _names_grounded(sentence: str, backing: Sequence[str]) -> bool:
    """All of a sentence's names and numbers must occur together in one supporting text (a passage or
    one of its sentences). Why one: a wrong sentence is typically a recombination, the right names
    from different places ("IBM" from one passage, the claim from another)."""
    names = _names(sentence)
    return any(all(name in unit.lower() for name in names) for unit in backing)


def _evidence_units(evidence: Sequence[str]) -> list[str]:
    """Whole passages and their single sentences: a claim may match one sentence better than a page."""
    units: list[str] = []
    for text in evidence:
        if text.strip():
            units.append(text)
            sentences = split_sentences(text)
            if len(sentences) > 1:
                units.extend(sentences)
    return list(dict.fromkeys(units))
