"""Answer-quality metrics: is the answer right, does it cite the right document, is it grounded?

The runner that produces answers lives in `api` (it drives the same stages as the service); this
module only reads QA files and scores what was answered, so the scoring can be tested by hand.

Answer accuracy follows SQuAD's normalisation (lowercase, drop punctuation and the articles a/an/the,
collapse white space) after removing `[n]` citation markers, which would otherwise put stray numbers
into the answer. An answer is *correct* when the token sequence of any gold variant occurs in it
contiguously (token-level, so gold "2" does not match "20"); token F1 is SQuAD's, best over variants.

Faithfulness is the share of answer sentences that the sources they cite support: a sentence is
supported when its embedding's cosine with the best-matching sentence (or the whole text) of one of
its cited sources reaches `SUPPORT_THRESHOLD`. A sentence without its own marker is checked against
every source the answer cites; an answer citing nothing supports nothing.
"""
from __future__ import annotations

import collections
import json
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rag.citations import cited_numbers, split_sentences
from rag.context import Source
from rag.metrics import percentile

# all-MiniLM-L6-v2 cosine: a sentence restating a source sentence scores about 0.6-0.9, an unrelated
# sentence on the same corpus 0.1-0.4; 0.5 sits between (and above the 0.35 used to attribute markers)
SUPPORT_THRESHOLD = 0.5

_MARKER = re.compile(r"\[\d{1,3}(?:\s*[,;]\s*\d{1,3})*\]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)

Encode = Callable[[Sequence[str]], np.ndarray]


class QAError(ValueError):
    """A QA file that cannot be used at all (missing, unreadable, no valid line)."""


@dataclass(frozen=True)
class QAItem:
    id: str
    question: str
    answers: list[str]
    doc: str
    title: str | None = None  # the document's title: citing any chunk of it counts (a long essay has many)
    split: str | None = None  # e.g. heldout / training: accuracy is also reported per split


def load_qa(path: Path) -> tuple[list[QAItem], list[str]]:
    """Valid items, and one `file:line: reason` per rejected line (the rest are still usable)."""
    if not path.is_file():
        raise QAError(f"{path}: no such file")
    items: list[QAItem] = []
    rejected: list[str] = []
    seen: set[str] = set()
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    item = _item(line)
                except ValueError as exc:
                    rejected.append(f"{path}:{number}: {exc}")
                    continue
                if item.id in seen:
                    rejected.append(f"{path}:{number}: duplicate id {item.id!r}")
                    continue
                seen.add(item.id)
                items.append(item)
    except UnicodeDecodeError as exc:
        rejected.append(f"{path}: invalid UTF-8 ({exc.reason}); the lines before it were read")
    return items, rejected


def _item(line: str) -> QAItem:
    try:
        record = json.loads(line.strip())
    except json.JSONDecodeError as exc:
        raise ValueError(f"malformed JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise ValueError("each line must be a JSON object")
    for key in ("id", "question", "doc"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise ValueError(f"{key!r} must be a non-empty string")
    answers = record.get("answers")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise ValueError("'answers' must be a non-empty list of non-empty strings")
    for answer in answers:
        if not normalize(answer):
            raise ValueError(f"gold answer {answer!r} is empty once punctuation and articles are removed")
    for key in ("title", "split"):
        if key in record and (not isinstance(record[key], str) or not record[key].strip()):
            raise ValueError(f"{key!r}, when given, must be a non-empty string")
    return QAItem(record["id"], record["question"], list(answers), record["doc"], record.get("title"),
                  record.get("split"))


def strip_markers(text: str) -> str:
    return _MARKER.sub(" ", text)


def normalize(text: str) -> str:
    """SQuAD's answer normalisation."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def contains_answer(answer: str, golds: Sequence[str]) -> bool:
    tokens = normalize(strip_markers(answer)).split()
    for gold in golds:
        wanted = normalize(gold).split()
        if wanted and any(tokens[i:i + len(wanted)] == wanted for i in range(len(tokens) - len(wanted) + 1)):
            return True
    return False


def token_f1(answer: str, golds: Sequence[str]) -> float:
    """SQuAD token F1, the best over gold variants."""
    predicted = normalize(strip_markers(answer)).split()
    best = 0.0
    for gold in golds:
        wanted = normalize(gold).split()
        common = sum((collections.Counter(predicted) & collections.Counter(wanted)).values())
        if common:
            precision, recall = common / len(predicted), common / len(wanted)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def faithfulness(answer: str, sources: Sequence[Source], encode: Encode,
                 threshold: float = SUPPORT_THRESHOLD) -> float | None:
    """Share of answer sentences supported by a source they cite; None for an empty answer."""
    by_number = {s.number: s for s in sources}
    cited_anywhere = [n for n in cited_numbers(answer) if n in by_number]
    sentences = []
    for sentence in split_sentences(answer):
        text = " ".join(strip_markers(sentence).split())
        if text.strip(string.punctuation + " "):
            own = [n for n in cited_numbers(sentence) if n in by_number]
            sentences.append((text, own or cited_anywhere))
    if not sentences:
        return None
    supported = 0
    for text, numbers in sentences:
        if not numbers:
            continue
        candidates = [c for n in numbers for c in (*split_sentences(by_number[n].text), by_number[n].text)]
        vectors = encode([text, *candidates])
        if float(np.max(vectors[1:] @ vectors[0])) >= threshold:
            supported += 1
    return supported / len(sentences)


@dataclass
class QuestionResult:
    """One answered question, as written to `--out` (one JSON line each)."""

    id: str
    question: str
    doc: str
    golds: list[str]
    title: str | None = None
    split: str | None = None
    setting: str | None = None  # which comparison setting answered it (`--settings`), None for a plain run
    answer: str = ""
    correct: bool = False
    f1: float = 0.0
    cited_docs: list[str] = field(default_factory=list)
    citation_correct: bool = False
    retrieved_docs: list[str] = field(default_factory=list)
    hit: bool = False
    in_context: bool = False
    faithfulness: float | None = None
    card_knowledge: bool = False  # expert-card knowledge survived the selectors and reached the prompt
    latency_ms: float = 0.0
    first_token_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_per_s: float | None = None
    generation_tokens_per_s: float | None = None
    error: str | None = None

    def as_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def score(result: QuestionResult, cited: Sequence[str], retrieved: Sequence[str], shown: Sequence[Source],
          encode: Encode, *, cited_titles: Sequence[str] = (), retrieved_titles: Sequence[str] = ()) -> QuestionResult:
    """Fill in the quality fields from what the pipeline answered, cited, retrieved and showed.

    The right document is the item's `doc` id or, when the item names a `title`, any source with
    that title (corpora such as pg-essays store one essay as many chunk ids)."""
    def right(ids: Sequence[str], titles: Sequence[str]) -> bool:
        return result.doc in ids or (result.title is not None and result.title in titles)

    result.correct = contains_answer(result.answer, result.golds)
    result.f1 = round(token_f1(result.answer, result.golds), 4)
    result.cited_docs = list(dict.fromkeys(cited))
    result.citation_correct = right(result.cited_docs, cited_titles)
    result.retrieved_docs = list(dict.fromkeys(retrieved))
    result.hit = right(result.retrieved_docs, retrieved_titles)
    result.in_context = any(right([s.id], [s.title]) for s in shown)
    value = faithfulness(result.answer, shown, encode)
    result.faithfulness = None if value is None else round(value, 4)
    return result


def summarise(results: Sequence[QuestionResult], top_k: int,
              retrieval: bool = True) -> dict[str, float | int | None]:
    """Averages over every question (a failed one counts as wrong); rates over those that produced tokens.

    Without retrieval there is no document to cite or hit, so those rates are None, not 0; accuracy is
    also given per `split` when the QA items name one (e.g. essays a card was or was not trained on)."""
    n = len(results)

    def share(values) -> float:
        return round(sum(values) / n, 4) if n else 0.0

    def median(values) -> float | None:
        values = [v for v in values if v is not None]
        return round(percentile(values, 50), 2) if values else None

    def when_retrieving(value: float) -> float | None:
        return value if retrieval else None

    faithful = [r.faithfulness for r in results if r.faithfulness is not None]
    latencies = [r.latency_ms for r in results if r.error is None]
    splits = sorted({r.split for r in results if r.split})
    return {
        "questions": n,
        "errors": sum(r.error is not None for r in results),
        "accuracy": share(r.correct for r in results),
        **{f"accuracy_{split}": round(sum(r.correct for r in results if r.split == split)
                                      / sum(r.split == split for r in results), 4) for split in splits},
        "f1": share(r.f1 for r in results),
        "citation_accuracy": when_retrieving(share(r.citation_correct for r in results)),
        f"hit@{top_k}": when_retrieving(share(r.hit for r in results)),
        "context_hit": when_retrieving(share(r.in_context for r in results)),
        "card_knowledge": share(r.card_knowledge for r in results),
        "faithfulness": round(sum(faithful) / len(faithful), 4) if faithful else None,
        "p50_ms": round(percentile(latencies, 50), 1) if latencies else None,
        "p95_ms": round(percentile(latencies, 95), 1) if latencies else None,
        "first_token_p50_ms": median(r.first_token_ms for r in results),
        "prompt_tokens_per_s": median(r.prompt_tokens_per_s for r in results),
        "generation_tokens_per_s": median(r.generation_tokens_per_s for r in results),
    }
