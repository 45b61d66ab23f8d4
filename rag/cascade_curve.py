"""The cost-quality curve of a cascade, computed offline from one pass over a QA set.

`mighty eval answers --llm cascade:...` runs, for every question, the small model, each policy's
confidence and the large model exactly once, and writes one `CascadeRecord` per question. Every
threshold's outcome follows from those records without running a model again: a question is
escalated when its confidence is below the threshold, and then gets the large model's answer,
latency and tokens. `mighty cascade fit` reads the same records to choose a threshold.

Latency of a threshold, per question: retrieval and prompt assembly, then under verify and
faithfulness the small answer plus the policy's own overhead plus (if escalated) the large answer;
under router the router's overhead plus the one model that answers.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rag.cascade_spec import POLICIES

GRID = [round(i / 20, 2) for i in range(21)]  # 0, 0.05, ..., 1


@dataclass
class Side:
    """One model's answer to one question."""

    answer: str = ""
    correct: bool = False
    f1: float = 0.0
    latency_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class CascadeRecord:
    """One question of a cascade evaluation (one JSON line of `--out`)."""

    id: str
    question: str
    golds: list[str]
    cascade: str  # the evaluated cascade string
    small_model: str
    large_model: str
    prepare_ms: float = 0.0
    small: Side = field(default_factory=Side)
    large: Side = field(default_factory=Side)
    confidence: dict[str, float] = field(default_factory=dict)  # policy -> confidence
    overhead_ms: dict[str, float] = field(default_factory=dict)  # policy -> its own cost
    verify: dict = field(default_factory=dict)  # how verify's confidence was read (method, per ordering)

    def as_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict) -> "CascadeRecord":
        values = dict(data)
        values["small"], values["large"] = Side(**values["small"]), Side(**values["large"])
        record = cls(**values)
        for name, table in (("confidence", record.confidence), ("overhead_ms", record.overhead_ms)):
            if not all(k in POLICIES and isinstance(v, (int, float)) and math.isfinite(v) for k, v in table.items()):
                raise ValueError(f"{name!r} must map policies ({', '.join(POLICIES)}) to finite numbers")
        return record


@dataclass(frozen=True)
class Point:
    """What one threshold (or a baseline) gives over the whole set."""

    label: str
    threshold: float | None
    accuracy: float
    escalated: float  # share of questions answered by the large model
    mean_latency_ms: float
    large_tokens: float  # mean large-model tokens (prompt + completion) per question
    relative_accuracy: float | None = None  # accuracy / always-large accuracy


def load_records(path: Path) -> tuple[list[CascadeRecord], list[str]]:
    """Records and one `file:line: reason` per unusable line."""
    records, rejected = [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(CascadeRecord.from_dict(json.loads(line)))
            except (json.JSONDecodeError, TypeError, KeyError, ValueError) as exc:
                rejected.append(f"{path}:{number}: not a cascade record ({type(exc).__name__}: {exc})")
    return records, rejected


def policies(records: Sequence[CascadeRecord]) -> list[str]:
    """Policies with a confidence for every record."""
    return [p for p in POLICIES if records and all(p in r.confidence for r in records)]


def baselines(records: Sequence[CascadeRecord]) -> tuple[Point, Point]:
    n = len(records) or 1
    large_accuracy = sum(r.large.correct for r in records) / n
    small = Point("always-small", None, sum(r.small.correct for r in records) / n, 0.0,
                  sum(r.prepare_ms + r.small.latency_ms for r in records) / n, 0.0)
    large = Point("always-large", None, large_accuracy, 1.0, sum(r.prepare_ms + r.large.latency_ms for r in records) / n,
                  sum(r.large.tokens for r in records) / n)
    return _relative(small, large_accuracy), _relative(large, large_accuracy)


def at(records: Sequence[CascadeRecord], policy: str, threshold: float) -> Point:
    n = len(records) or 1
    correct = escalated = 0
    latency = tokens = 0.0
    for r in records:
        up = r.confidence[policy] < threshold
        escalated += up
        correct += r.large.correct if up else r.small.correct
        tokens += r.large.tokens if up else 0
        overhead = r.overhead_ms.get(policy, 0.0)
        if policy == "router":
            latency += r.prepare_ms + overhead + (r.large.latency_ms if up else r.small.latency_ms)
        else:
            latency += r.prepare_ms + r.small.latency_ms + overhead + (r.large.latency_ms if up else 0.0)
    large_accuracy = sum(r.large.correct for r in records) / n
    return _relative(Point(policy, threshold, correct / n, escalated / n, latency / n, tokens / n), large_accuracy)


def sweep(records: Sequence[CascadeRecord], policy: str) -> list[Point]:
    """The curve over a fixed grid plus every observed confidence (where the outcome can change)."""
    observed = {round(r.confidence[policy], 4) for r in records if 0 <= r.confidence[policy] <= 1}
    return [at(records, policy, t) for t in sorted(set(GRID) | observed)]


def fit(records: Sequence[CascadeRecord], policy: str, target_accuracy: float | None = None,
        target_relative: float | None = None, budget: float | None = None) -> Point | None:
    """The threshold meeting an accuracy target with the fewest escalations, or the most accurate one
    within an escalation budget; None when no threshold meets the target."""
    curve = sweep(records, policy)
    if budget is not None:
        within = [p for p in curve if p.escalated <= budget + 1e-9]
        return max(within, key=lambda p: (p.accuracy, -p.escalated, -p.mean_latency_ms), default=None)
    good = [p for p in curve if (target_accuracy is None or p.accuracy >= target_accuracy - 1e-9)
            and (target_relative is None or (p.relative_accuracy or 0) >= target_relative - 1e-9)]
    return min(good, key=lambda p: (p.escalated, p.mean_latency_ms, p.threshold), default=None)


def _relative(point: Point, large_accuracy: float) -> Point:
    relative = round(point.accuracy / large_accuracy, 4) if large_accuracy else None
    return Point(point.label, point.threshold, round(point.accuracy, 4), round(point.escalated, 4),
                 round(point.mean_latency_ms, 1), round(point.large_tokens, 1), relative)


def table(points: Sequence[Point]) -> str:
    header = f"{'curve':<14}{'threshold':>10}{'accuracy':>10}{'vs large':>10}{'escalated':>11}{'mean s':>9}{'large tok':>11}"
    lines = [header, "-" * len(header)]
    for p in points:
        threshold = "-" if p.threshold is None else f"{p.threshold:.2f}"
        relative = "-" if p.relative_accuracy is None else f"{p.relative_accuracy:.2f}"
        lines.append(f"{p.label:<14}{threshold:>10}{p.accuracy:>10.3f}{relative:>10}{p.escalated:>11.2f}"
                     f"{p.mean_latency_ms / 1000:>9.2f}{p.large_tokens:>11.0f}")
    return "\n".join(lines)


def as_dicts(points: Sequence[Point]) -> list[dict]:
    return [asdict(p) for p in points]
