"""Fitting `auto` routing thresholds on labelled questions, and measuring routing honestly.

A card's routing threshold decides which questions reach it. A hand-set constant is a guess about
one embedding space and one card description; fitting it on real questions (positives: questions
about the card's domain; negatives: questions from elsewhere) makes it a measurement. The questions
are split by a seeded hash into a fit half and a held-out half, per label, so the figures reported
after fitting are on questions the threshold never saw.

Everything here is pure: the scores come from the service's own router (`CardRouter.score`) and
selection is replayed with `experts.routing.select`, so what is measured is what `auto` does.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from experts.routing import RouteDecision, select


@dataclass(frozen=True)
class RouteExample:
    text: str
    card: str | None  # the card that should answer it; None for a question no card should get
    source: str = ""  # the file it came from (for the report)


@dataclass(frozen=True)
class RouteScores:
    """An example and the router's unselected decisions for it (one per knowledge card)."""

    example: RouteExample
    decisions: list[RouteDecision]


@dataclass(frozen=True)
class CardQuality:
    card: str
    threshold: float
    precision: float | None  # None when the card was selected for no question
    recall: float | None  # None when no question is labelled with the card
    true_positives: int
    false_positives: int
    false_negatives: int


def split_examples(examples: Sequence[RouteExample], fit_fraction: float,
                   seed: int) -> tuple[list[RouteExample], list[RouteExample]]:
    """(fit, held-out): per label, `fit_fraction` of the examples ranked by a seeded hash of their text.

    Deterministic for a seed, and stable when questions are added (an example never moves split)."""
    if not 0.0 < fit_fraction < 1.0:
        raise ValueError(f"the fit fraction must be between 0 and 1 (exclusive), got {fit_fraction}")
    by_label: dict[str | None, list[RouteExample]] = {}
    for example in examples:
        by_label.setdefault(example.card, []).append(example)
    fit, heldout = [], []
    for group in by_label.values():
        ranked = sorted(group, key=lambda e: hashlib.sha256(f"{seed}\x00{e.text}".encode()).hexdigest())
        count = round(fit_fraction * len(ranked))
        if len(ranked) >= 2:
            count = min(max(count, 1), len(ranked) - 1)  # both halves see every label
        fit.extend(ranked[:count])
        heldout.extend(ranked[count:])
    return fit, heldout


def fit_threshold(positive: Sequence[float], negative: Sequence[float]) -> float:
    """The threshold with the best F1 separating positive from negative scores (ties: the higher one,
    which admits fewer off-domain questions), placed midway between neighbouring scores."""
    if not positive:
        raise ValueError("no positive question to fit on: give questions labelled with the card")
    values = sorted(set(positive) | set(negative))
    candidates = [values[0] - 1e-3] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [values[-1] + 1e-3]
    best, best_f1 = candidates[0], -1.0
    for threshold in candidates:
        tp = sum(s >= threshold for s in positive)
        fp = sum(s >= threshold for s in negative)
        f1 = 2 * tp / (2 * tp + fp + (len(positive) - tp)) if tp else 0.0
        if f1 >= best_f1:
            best, best_f1 = threshold, f1
    return round(best, 4)


def quality(scored: Sequence[RouteScores], thresholds: dict[str, float], max_cards: int,
            cards: Sequence[str]) -> list[CardQuality]:
    """Precision and recall of routing per card, replaying selection under `thresholds`."""
    counts = {card: [0, 0, 0] for card in cards}
    for item in scored:
        chosen = {d.card for d in select(item.decisions, thresholds, max_cards) if d.selected}
        for card in cards:
            wanted = item.example.card == card
            if card in chosen:
                counts[card][0 if wanted else 1] += 1
            elif wanted:
                counts[card][2] += 1
    report = []
    for card in cards:
        tp, fp, fn = counts[card]
        report.append(CardQuality(card, thresholds[card], round(tp / (tp + fp), 4) if tp + fp else None,
                                  round(tp / (tp + fn), 4) if tp + fn else None, tp, fp, fn))
    return report


def fit_thresholds(scored: Sequence[RouteScores], cards: Sequence[str]) -> dict[str, float]:
    """One threshold per card, each from its own scores on the fit split: questions labelled with the
    card are positives, every other question is a negative for it."""
    fitted = {}
    for card in cards:
        positive, negative = [], []
        for item in scored:
            score = next((d.score for d in item.decisions if d.card == card), None)
            if score is not None:
                (positive if item.example.card == card else negative).append(score)
        fitted[card] = fit_threshold(positive, negative)
    return fitted


class QuestionFileError(ValueError):
    """A question file that cannot be used; the message names the file and, when known, the line."""


def load_questions(path, card: str | None, limit: int | None = None) -> list[RouteExample]:
    """Questions from JSONL (a `question` or `text` field per line, so QA sets and BEIR query files
    both work) or plain text (one question per line). Blank lines are skipped; anything else that is
    not a question is an error naming its line, not a silently smaller set."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise QuestionFileError(f"{path}: no such file")
    examples: list[RouteExample] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise QuestionFileError(f"{path}: invalid UTF-8 ({exc.reason})") from None
    jsonl = path.suffix in (".jsonl", ".json")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        text = line.strip()
        if jsonl:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise QuestionFileError(f"{path}:{number}: malformed JSON ({exc.msg})") from None
            text = record.get("question", record.get("text")) if isinstance(record, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise QuestionFileError(f"{path}:{number}: a line needs a non-empty 'question' or 'text' string")
        examples.append(RouteExample(" ".join(text.split()), card, str(path)))
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise QuestionFileError(f"{path}: no questions in the file")
    return examples
