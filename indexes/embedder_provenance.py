"""Which embedder produced which rows: per segment, consecutive runs of rows with one fingerprint.

Why runs and not one fingerprint per segment: a merge (`indexes.merge`) copies vectors of many
segments into one without re-embedding, and those segments may come from different embedders (one
written before fingerprints existed, one after). Runs keep each row's origin through any number of
merges, so the checks in `indexes.embedder_check` can sample exactly the rows an old embedder wrote.
A segment written before runs existed is one run of unknown origin (fingerprint None).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from indexes.generations import EmbedderShare


@dataclass(frozen=True)
class EmbedderRun:
    fingerprint: str | None
    rows: int

    @classmethod
    def from_info(cls, info: dict) -> list["EmbedderRun"]:
        """The runs stored in a segment.json, or one run of unknown origin for an older one."""
        stored = info.get("embedders")
        if not stored:
            return [cls(None, int(info["rows"]))]
        return [cls(r.get("fingerprint"), int(r["rows"])) for r in stored]

    def to_json(self) -> dict:
        return {"fingerprint": self.fingerprint, "rows": self.rows}


def coalesce(runs: Iterable[EmbedderRun]) -> list[EmbedderRun]:
    """Adjacent runs of one fingerprint joined, empty runs dropped."""
    out: list[EmbedderRun] = []
    for run in runs:
        if run.rows <= 0:
            continue
        if out and out[-1].fingerprint == run.fingerprint:
            out[-1] = EmbedderRun(run.fingerprint, out[-1].rows + run.rows)
        else:
            out.append(run)
    return out


def kept_runs(runs: Sequence[EmbedderRun], alive: np.ndarray) -> list[EmbedderRun]:
    """The runs of a segment after keeping only the rows `alive` marks (a merge drops deleted rows)."""
    counts, start = [], 0
    for run in runs:
        counts.append(EmbedderRun(run.fingerprint, int(np.count_nonzero(alive[start:start + run.rows]))))
        start += run.rows
    return coalesce(counts)


def run_ranges(runs: Sequence[EmbedderRun]) -> list[tuple[str | None, int, int]]:
    """(fingerprint, first row, end row) of each run."""
    out, start = [], 0
    for run in runs:
        out.append((run.fingerprint, start, start + run.rows))
        start += run.rows
    return out


def shares(segment_runs: Sequence[Sequence[EmbedderRun]], live: Sequence[np.ndarray | None]) -> list[EmbedderShare]:
    """Live chunks per fingerprint over a generation's segments (what its manifest records), in the
    order fingerprints first appear."""
    return combine([EmbedderShare(fingerprint, end - start if mask is None else int(np.count_nonzero(mask[start:end])))
                    for fingerprint, start, end in run_ranges(runs)] for runs, mask in zip(segment_runs, live))


def combine(parts: Iterable[Sequence[EmbedderShare]]) -> list[EmbedderShare]:
    """Shares of many parts (segments, shards) added up per fingerprint, in first-seen order."""
    totals: dict[str | None, int] = {}
    for part in parts:
        for share in part:
            totals[share.fingerprint] = totals.get(share.fingerprint, 0) + share.chunks
    return [EmbedderShare(fp, n) for fp, n in totals.items() if n]
