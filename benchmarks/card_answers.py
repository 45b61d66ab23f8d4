"""Card knowledge for a larger answerer: four settings side by side on the pg-essays QA set.

    nice -n 19 python -m benchmarks.card_answers --card /work/cards/pg-essays-qwen05 \\
        [--home /work/bench-cache/cardqa/home] [--answerer local/qwen2.5-coder-1.5b-instruct] \\
        [--settings all | alone,card,...] [--limit N]

The answerer (default the local Qwen2.5-Coder-1.5B) answers data/qa/pg-essays-qa.jsonl alone (no
sources, closed-book prompt), with the card's knowledge, with retrieval from the pg-essays collection,
and with both; this is `mighty eval answers --settings` (the same code), plus the set-up it needs:

- the corpus is indexed once into the home as collection `pg-essays` (skipped when it exists);
- the card folder is registered there, and given `collection = "pg-essays"` (a new version, same
  weights) when it names none: the card's knowledge is fact-checked against its source collection,
  without which no sentence it writes could be kept in the settings that retrieve nothing;
- each question's split (held-out / training essay) is taken from the card's own recorded held-out
  documents, and any disagreement with the QA file's `split` is reported.

Prints a table, the targets (card knowledge: +10 points without retrieval, no loss with retrieval),
then one JSON line. Per-question answers go to <home>/../card-answers.jsonl.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from itertools import zip_longest
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CORPUS = REPO.parent / "shared" / "corpora" / "pg-essays" / "corpus.jsonl"  # the shared data, used in place
COLLECTION = "pg-essays"


def ensure_collection(home: Path, corpus: Path) -> None:
    from indexes.collection import Home
    from indexes.config import CollectionConfig
    from indexes.readers import read_paths

    if COLLECTION in Home(home).names():
        return
    print(f"indexing {corpus} into {home} as {COLLECTION!r} (once)", file=sys.stderr)
    collection = Home(home).create(CollectionConfig(name=COLLECTION))
    with collection.writer() as writer:
        for document in read_paths([str(corpus)], collection.config.max_document_bytes):
            writer.upsert(document)
        writer.commit()


def ensure_card(home: Path, folder: Path):
    """The card registered in the home (active), naming the pg-essays collection as its source."""
    from api.card_registry import open_registry, operator_actor
    from experts.errors import CardNotFound
    from experts.fusion.cards import next_version
    from experts.manifest import load_manifest

    registry = open_registry(home)
    manifest = load_manifest(folder)
    try:
        known = {ref.version for ref in registry.versions(manifest.name)}
    except CardNotFound:
        known = set()
    if manifest.version not in known:
        print(f"registering {folder} (validates and loads the card)", file=sys.stderr)
        registry.register(folder, operator_actor(), activate=True)
    card = registry.get(manifest.name)
    if card.manifest.collection != COLLECTION:
        version = next_version(card.manifest.version)
        while version in known | {card.manifest.version}:
            version = next_version(version)
        updated = card.manifest.model_copy(update={"version": version, "collection": COLLECTION})
        card = registry.update_manifest(manifest.name, type(card.manifest).model_validate(updated.model_dump()),
                                        operator_actor(), activate=True)
    return card


def card_splits(items, card) -> tuple[list, list[str]]:
    """Items re-labelled by the card's recorded held-out essays; the ids whose QA-file split differs."""
    heldout = set(card.manifest.heldout.documents) if card.manifest.heldout else set()
    if not heldout:
        return list(items), []
    relabelled = [replace(item, split="heldout" if item.title in heldout else "training") for item in items]
    return relabelled, [a.id for a, b in zip(items, relabelled) if a.split != b.split]


def report_from(path: Path, top_k: int) -> dict:
    """The table again from a per-question file, e.g. of a run stopped early: only questions answered
    in every setting present count, so the settings stay compared on the same questions."""
    from api.answer_runs import SETTINGS, SettingRun
    from api.cli.eval_commands import settings_report
    from rag.answer_eval import QuestionResult

    rows = [QuestionResult(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]
    names = [name for name in SETTINGS if any(r.setting == name for r in rows)]
    complete = {r.id for r in rows if all(any(o.id == r.id and o.setting == n for o in rows) for n in names)}
    runs = [SettingRun(SETTINGS[name], "", [r for r in rows if r.setting == name and r.id in complete])
            for name in names]
    return settings_report(path.name, COLLECTION, top_k, None, runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--card", type=Path, help="card folder (holding card.toml)")
    parser.add_argument("--home", type=Path, default=Path("/work/bench-cache/cardqa/home"))
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--qa", type=Path, default=REPO / "data" / "qa" / "pg-essays-qa.jsonl")
    parser.add_argument("--answerer", default="local/qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--settings", default="all")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--interleave", action="store_true",
                        help="answer each question in every setting before the next (a run cut short stays paired)")
    parser.add_argument("--alternate-splits", action="store_true",
                        help="order questions held-out, training, held-out, ... so a partial run covers both")
    parser.add_argument("--out", type=Path, default=None, help="per-question JSONL (default <home>/../card-answers.jsonl)")
    parser.add_argument("--timeout-s", type=float, default=1800.0,
                        help="retrieval, card and model timeouts: generous, as 2 shared cores can be very slow")
    parser.add_argument("--report-only", type=Path, default=None,
                        help="print the table from this per-question file instead of answering")
    args = parser.parse_args(argv)
    if args.report_only:
        from api.cli.eval_commands import _print_settings

        report = report_from(args.report_only, args.top_k)
        _print_settings(report)
        print(json.dumps(report))
        return 0

    from api.answer_runs import AnswerRun, evaluate_settings, parse_settings
    from api.cli.eval_commands import _print_settings, settings_report
    from api.settings import ServiceSettings
    from api.state import ServiceState
    from rag.answer_eval import load_qa

    if args.card is None:
        parser.error("--card is required (unless --report-only)")
    items, rejected = load_qa(args.qa)
    if rejected:
        print("\n".join(rejected), file=sys.stderr)
        return 1
    items = items[:args.limit] if args.limit else items
    settings = parse_settings(args.settings)
    ensure_collection(args.home, args.corpus)
    card = ensure_card(args.home, args.card)
    items, moved = card_splits(items, card)
    if args.alternate_splits:
        heldout = [item for item in items if item.split == "heldout"]
        training = [item for item in items if item.split != "heldout"]
        items = [item for pair in zip_longest(heldout, training) for item in pair if item is not None]
    state = ServiceState(ServiceSettings(home=args.home, retrieval_timeout_s=args.timeout_s,
                                         cards_timeout_s=args.timeout_s, llm_timeout_s=args.timeout_s))
    out = args.out or args.home.parent / "card-answers.jsonl"
    started = time.time()
    try:
        with open(out, "w", encoding="utf-8") as sink:
            def write(result) -> None:
                sink.write(result.as_json() + "\n")
                sink.flush()
            runs = evaluate_settings(state, AnswerRun(COLLECTION, args.answerer, [card.manifest.name], args.top_k),
                                     settings, items, None, write, interleave=args.interleave)
    finally:
        state.close()
    report = settings_report(args.qa.name, COLLECTION, args.top_k, f"{card.manifest.name}@{card.manifest.version}",
                             runs)
    report.update(card_base=card.manifest.model.base, split_mismatches=moved, minutes=round((time.time() - started) / 60, 1))
    _print_settings(report)
    rows = {row["setting"]: row for row in report["settings"]}
    targets = {}
    if {"alone", "card"} <= set(rows):
        gain = rows["card"]["accuracy"] - rows["alone"]["accuracy"]
        targets["card_gain_without_retrieval_points"] = round(100 * gain, 1)
        print(f"card knowledge without retrieval: {100 * gain:+.1f} points (target >= +10): "
              f"{'met' if gain >= 0.10 else 'missed'}")
    if {"retrieval", "retrieval+card"} <= set(rows):
        gain = rows["retrieval+card"]["accuracy"] - rows["retrieval"]["accuracy"]
        targets["card_gain_with_retrieval_points"] = round(100 * gain, 1)
        print(f"card knowledge with retrieval: {100 * gain:+.1f} points (target >= 0): "
              f"{'met' if gain >= 0 else 'missed'}")
    if moved:
        print(f"{len(moved)} question(s) sit on the other side of the card's recorded split than the QA file "
              f"says: {', '.join(moved)}", file=sys.stderr)
    print(json.dumps({**report, "targets": targets}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
