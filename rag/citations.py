"""Citations: parse [n] markers from an answer, and attribute uncited sentences after the fact.

Small local models often answer correctly without writing markers. Rather than return an answer
with no provenance, each uncited sentence is matched to the source it is most similar to (embedding
cosine above a threshold) and marked; such citations are flagged `post_hoc` so clients can tell.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rag.context import Source

_MARKER = re.compile(r"\[(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\]")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")

Encode = Callable[[Sequence[str]], np.ndarray]


def split_sentences(text: str) -> list[str]:
    """Sentences of a short generated text (split after . ! ? followed by white space)."""
    return [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]


@dataclass(frozen=True)
class Citation:
    source: Source
    post_hoc: bool = False


def cited_numbers(answer: str) -> list[int]:
    numbers = []
    for match in _MARKER.finditer(answer):
        numbers.extend(int(n) for n in re.split(r"\s*[,;]\s*", match.group(1)))
    return list(dict.fromkeys(numbers))


def parse_citations(answer: str, sources: Sequence[Source]) -> list[Citation]:
    """Sources the answer cites, in order of first citation; unknown numbers are ignored."""
    by_number = {s.number: s for s in sources}
    return [Citation(by_number[n]) for n in cited_numbers(answer) if n in by_number]


def attribute(answer: str, sources: Sequence[Source], encode: Encode,
              threshold: float = 0.35) -> tuple[str, list[Citation]]:
    """Add markers to uncited sentences that a source clearly supports; returns the new answer too."""
    citations = parse_citations(answer, sources)
    if citations or not sources or not answer.strip():
        return answer, citations
    sentences = split_sentences(answer)
    vectors = encode([*sentences, *(s.text for s in sources)])
    similarity = vectors[:len(sentences)] @ vectors[len(sentences):].T
    marked, found = [], {}
    for i, sentence in enumerate(sentences):
        best = int(np.argmax(similarity[i]))
        if similarity[i, best] >= threshold:
            source = sources[best]
            found.setdefault(source.number, Citation(source, post_hoc=True))
            sentence = _before_final_punctuation(sentence, f" [{source.number}]")
        marked.append(sentence)
    return " ".join(marked), list(found.values())


def _before_final_punctuation(sentence: str, marker: str) -> str:
    stripped = sentence.rstrip()
    if stripped and stripped[-1] in ".!?":
        return stripped[:-1] + marker + stripped[-1]
    return stripped + marker
