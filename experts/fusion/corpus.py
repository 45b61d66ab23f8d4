"""Evaluation text for fusion: a JSONL corpus, minus any card's training documents, split in two.

A card records which documents of its training corpus it never saw (`heldout`). When fusion is
evaluated on that corpus only those documents may be used: scoring a document the expert was
trained on would flatter it. Chunks are joined back into documents (by title, else id, as training
does), and the usable documents are split, never their chunks, into a part for fitting fusion
weights and a part for scoring them.
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


def document_key(record: dict, number: int) -> str:
    """What a document is called when splitting: its title, else its id (chunks of one essay share a title)."""
    title = str(record.get("title") or "").strip()
    return title or str(record.get("_id") or record.get("id") or f"line {number}")


def join_chunks(texts: list[str], longest: int = 2000, shortest: int = 16) -> str:
    """Chunks of one document in reading order, writing the text neighbouring chunks share only once."""
    joined = texts[0]
    for text in texts[1:]:
        limit = min(longest, len(joined), len(text))
        shared = next((size for size in range(limit, shortest - 1, -1) if joined.endswith(text[:size])), 0)
        joined += text[shared:] if shared else "\n\n" + text
    return joined


def _trained_on(card: CardRef, path: Path, digest: str, keys: set[str]) -> str | None:
    """Why this corpus counts as the card's training corpus, or None.

    A recorded sha256 may hash the file or the documents as training read them, so a matching path
    or any shared document key also counts: restricting to held-out documents is the safe mistake.
    """
    heldout = card.manifest.heldout
    if heldout is None:
        return None
    if heldout.corpus_sha256 == digest:
        return "same file (sha256)"
    recorded = Path(heldout.corpus).expanduser()
    if not recorded.is_absolute():
        recorded = card.folder / recorded
    if recorded.exists() and recorded.resolve() == path.resolve():
        return "same path"
    if keys & set(heldout.documents):
        return "shares held-out documents"
    return None


def split_corpus(path: Path, cards: list[CardRef], fit_fraction: float = 0.5, seed: int = 0) -> EvalSplit:
    """Fit and score texts; on a card's own corpus only its held-out documents (for all such cards)."""
    records = read_jsonl(path)
    digest = file_sha256(path)
    texts: dict[str, list[str]] = {}
    for number, record in enumerate(records, 1):
        texts.setdefault(document_key(record, number), []).append(record["text"])
    trained = [card for card in cards if _trained_on(card, path, digest, set(texts))]
    if trained:
        allowed = set.intersection(*(set(card.manifest.heldout.documents) for card in trained))
        note = (f"held-out documents of {', '.join(card.label for card in trained)} only "
                f"({len(allowed & set(texts))} of {len(texts)})")
        texts = {key: parts for key, parts in texts.items() if key in allowed}
    else:
        note = "no card was trained on this corpus: all documents"
    documents = sorted(texts)
    if len(documents) < 2:
        which = f" held out by {', '.join(c.label for c in trained)}" if trained else ""
        raise CorpusError(f"{path}: {len(documents)} usable document(s){which}; fitting and scoring need at "
                          "least 2 (documents are told apart by title, else id); use another corpus")
    random.Random(seed).shuffle(documents)
    cut = min(len(documents) - 1, max(1, round(fit_fraction * len(documents))))
    fit, score = documents[:cut], documents[cut:]
    return EvalSplit([join_chunks(texts[d]) for d in fit], [join_chunks(texts[d]) for d in score], fit, score,
                     f"{note}; {len(fit)} documents to fit, {len(score)} to score (seed {seed})")
