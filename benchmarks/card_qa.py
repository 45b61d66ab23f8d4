"""Check (or fill in) the pg-essays QA set against the corpus: `doc`, `split`, and verbatim golds.

    python -m benchmarks.card_qa data/qa/pg-essays-qa.jsonl --corpus /work/shared/corpora/pg-essays/corpus.jsonl
    python -m benchmarks.card_qa data/qa/pg-essays-qa.jsonl --corpus ... --write   # rewrite doc and split

Each question names its essay (`title`). This script, not a person, decides the rest, so the QA file
cannot drift from the corpus or from the card's training split:

- `split` is `heldout` or `training`: the same seeded split `mighty cards train` draws
  (`experts.training.corpus.split_heldout` over titles, with the default seed and held-out fraction
  unless given), so a held-out question is about an essay the card never trained on;
- `doc` is the id of the first corpus chunk of that essay holding a gold answer, verbatim (case and
  spacing aside), which is also the citation a correct answer should carry;
- a question whose gold answer appears nowhere in its essay is an error (exit 1), as is an unknown title.

Only questions, gold answers, titles and these two derived fields are stored: never corpus text.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from experts.training.corpus import split_heldout
from experts.training.settings import TrainSettings

_DEFAULTS = TrainSettings()


def _squash(text: str) -> str:
    return " ".join(text.lower().split())


def read_chunks(corpus: Path) -> list[dict]:
    with open(corpus, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def annotate(records: list[dict], chunks: list[dict], seed: int, fraction: float) -> tuple[list[dict], list[str]]:
    """The records with `doc` and `split` recomputed, and one error per question that does not check out."""
    titles = sorted({chunk["title"].strip() for chunk in chunks})
    heldout = set(split_heldout(titles, fraction, seed))
    by_title: dict[str, list[dict]] = {}
    for chunk in chunks:
        by_title.setdefault(chunk["title"].strip(), []).append(chunk)
    annotated, errors = [], []
    for record in records:
        title = record.get("title", "").strip()
        if title not in by_title:
            errors.append(f"{record.get('id')}: no essay titled {title!r} in the corpus")
            continue
        golds = [_squash(answer) for answer in record["answers"]]
        holder = next((chunk["_id"] for chunk in by_title[title]
                       if any(gold in _squash(chunk["text"]) for gold in golds)), None)
        if holder is None:
            errors.append(f"{record['id']}: no gold answer {record['answers']} occurs verbatim in {title!r}")
            continue
        annotated.append({**record, "doc": holder, "split": "heldout" if title in heldout else "training"})
    return annotated, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("qa", type=Path)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    parser.add_argument("--heldout-fraction", type=float, default=_DEFAULTS.heldout_fraction)
    parser.add_argument("--write", action="store_true", help="rewrite doc and split in place")
    args = parser.parse_args(argv)
    records = [json.loads(line) for line in args.qa.read_text(encoding="utf-8").splitlines() if line.strip()]
    annotated, errors = annotate(records, read_chunks(args.corpus), args.seed, args.heldout_fraction)
    for error in errors:
        print(f"{args.qa}: {error}", file=sys.stderr)
    changed = [a["id"] for a, r in zip(annotated, records) if (a["doc"], a["split"]) != (r.get("doc"), r.get("split"))]
    counts = {split: sum(a["split"] == split for a in annotated) for split in ("heldout", "training")}
    print(json.dumps({"questions": len(records), "checked": len(annotated), **counts, "changed": changed,
                      "errors": len(errors)}))
    if args.write and not errors:
        keys = ("id", "question", "answers", "title", "split", "doc")
        lines = [json.dumps({k: a[k] for k in keys}, ensure_ascii=False) for a in annotated]
        args.qa.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 1 if errors or (changed and not args.write) else 0


if __name__ == "__main__":
    sys.exit(main())
