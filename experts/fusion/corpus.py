"""Evaluation text for fusion: a JSONL corpus, minus any card's training documents, split in two.

A card records which documents of its training corpus it never saw (`heldout`). When fusion is
evaluated on that corpus only those documents may be used: scoring a document the expert was
trained on would flatter it. The usable documents are split by document (never by chunk) into a
part for fitting fusion weights and a part for scoring them.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from experts.fusion.cards import CardRef


class CorpusError(ValueError):
    """The corpus cannot be read or leaves nothing to evaluate; the message names file and line."""


@dataclass(frozen=True)
class EvalSplit:
    fit: list[str]  # texts used to fit weights
    score: list[str]  # texts used to report perplexity
    fit_documents: list[str]
    score_documents: list[str]
    note: str  # how the documents were chosen, for reports and manifests


def read_jsonl(path: Path) -> list[dict]:
    """Records with a non-empty `text`; a bad line is an error naming the file and line."""
    records = []
    try:
        handle = open(path, encoding="utf-8")
    except OSError as error:
        raise CorpusError(f"{path}: cannot read the corpus: {error}") from None
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise CorpusError(f"{path}:{number}: not valid JSON ({error.msg}); a corpus has one JSON "
                                  "object per line with a 'text' field") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise CorpusError(f"{path}:{number}: each line needs a string 'text' field")
            if record["text"].strip():
                records.append(record)
    if not records:
        raise CorpusError(f"{path}: no documents with text")
    return records


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _trained_on(card: CardRef, path: Path, digest: str) -> bool:
    heldout = card.manifest.heldout
    if heldout is None:
        return False
    if heldout.corpus_sha256:
        return heldout.corpus_sha256 == digest
    recorded = Path(heldout.corpus).expanduser()
    if not recorded.is_absolute():
        recorded = card.folder / recorded
    return recorded.exists() and recorded.resolve() == path.resolve()


def split_corpus(path: Path, cards: list[CardRef], fit_fraction: float = 0.5, seed: int = 0,
                 key: str = "title") -> EvalSplit:
    """Fit and score texts; on a card's own corpus only its held-out documents (for all such cards)."""
    records = read_jsonl(path)
    digest = file_sha256(path)
    trained = [card for card in cards if _trained_on(card, path, digest)]
    if trained:
        key = trained[0].manifest.heldout.key
        allowed = set.intersection(*(set(card.manifest.heldout.documents) for card in trained))
        note = (f"held-out documents of {', '.join(card.label for card in trained)} only "
                f"({len(allowed)} of the corpus)")
        if not allowed:
            raise CorpusError(f"{path}: the cards {', '.join(c.label for c in trained)} were trained on this corpus "
                              "and record no held-out document they all share; evaluate on another corpus")
    else:
        allowed = None
        note = "no card was trained on this corpus: all documents"
    texts: dict[str, list[str]] = {}
    for number, record in enumerate(records, 1):
        document = str(record.get(key) or record.get("_id") or f"line {number}")
        if allowed is None or document in allowed:
            texts.setdefault(document, []).append(record["text"])
    documents = sorted(texts)
    if len(documents) < 2:
        raise CorpusError(f"{path}: {len(documents)} usable document(s); fitting and scoring need at least 2 "
                          f"(documents are told apart by {key!r})")
    random.Random(seed).shuffle(documents)
    cut = min(len(documents) - 1, max(1, round(fit_fraction * len(documents))))
    fit, score = documents[:cut], documents[cut:]
    return EvalSplit([t for d in fit for t in texts[d]], [t for d in score for t in texts[d]], fit, score,
                     f"{note}; {len(fit)} documents to fit, {len(score)} to score (seed {seed})")
