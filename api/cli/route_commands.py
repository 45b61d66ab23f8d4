"""`mighty cards route-check` and `mighty cards route-fit`: how well `auto` routing picks cards, and
a fitted threshold per card stored in the registry (a new card version), instead of a hand-set one.

Both score every question with the service's own router (descriptions and collection centroids of
the active knowledge cards, `max_cards` competition), so the figures describe what `/v1/query` with
`cards: auto` does on this home.
"""
from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from api.cli.context import EXIT_REJECTED, err, fail, home_from, out
from experts.route_fit import (CardQuality, QuestionFileError, RouteExample, RouteScores, fit_thresholds, load_questions,
                               quality, split_examples)

POSITIVES_HELP = "CARD=FILE: questions that card should answer (JSONL with question/text, or one per line)."
NEGATIVES_HELP = "FILE: questions no card should answer, e.g. MS MARCO queries.jsonl (repeatable)."


def route_check(ctx: typer.Context,
                positives: list[str] = typer.Option(..., "--positives", help=POSITIVES_HELP),
                negatives: list[Path] = typer.Option([], "--negatives", help=NEGATIVES_HELP),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Precision and recall of `auto` routing per card, with the thresholds in force, on every question."""
    with _session(ctx) as (state, lazy, cards):
        examples = _examples(positives, negatives, {c.manifest.name for c in cards})
        router = lazy.load()
        scored = _score(router, cards, examples)
        thresholds = {c.manifest.name: router.threshold_for(c.manifest) for c in cards}
        names = sorted({e.card for e in examples if e.card})
        report = {"questions": len(examples), "negatives": sum(e.card is None for e in examples),
                  "cards": [_row(q) for q in quality(scored, thresholds, router.max_cards, names)]}
    _show(report, as_json, "routing with the thresholds in force")


def route_fit(ctx: typer.Context,
              positives: list[str] = typer.Option(..., "--positives", help=POSITIVES_HELP),
              negatives: list[Path] = typer.Option([], "--negatives", help=NEGATIVES_HELP),
              fit_fraction: float = typer.Option(0.5, "--fit-fraction", help="Share of each label used to fit."),
              seed: int = typer.Option(0, "--seed", help="Fixes the fit / held-out split."),
              store: bool = typer.Option(True, "--store/--dry-run",
                                         help="Store each fitted threshold as a new active card version."),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Fit each named card's routing threshold on a fit split (best F1), report precision and recall on
    the held-out split before and after, and store the thresholds with the cards."""
    if not 0.0 < fit_fraction < 1.0:
        raise fail("--fit-fraction must be between 0 and 1 (exclusive)")
    with _session(ctx) as (state, lazy, cards):
        examples = _examples(positives, negatives, {c.manifest.name for c in cards})
        router = lazy.load()
        fit, heldout = split_examples(examples, fit_fraction, seed)
        names = sorted({e.card for e in examples if e.card})
        before = {c.manifest.name: router.threshold_for(c.manifest) for c in cards}
        fit_scores, heldout_scores = _score(router, cards, fit), _score(router, cards, heldout)
        after = {**before, **fit_thresholds(fit_scores, names)}
        rows = []
        for old, new, on_fit in zip(quality(heldout_scores, before, router.max_cards, names),
                                    quality(heldout_scores, after, router.max_cards, names),
                                    quality(fit_scores, after, router.max_cards, names)):
            rows.append({"card": old.card, "threshold_before": old.threshold, "threshold_after": new.threshold,
                         "heldout_before": _row(old), "heldout_after": _row(new), "fit_after": _row(on_fit)})
        report = {"fit_questions": len(fit), "heldout_questions": len(heldout), "seed": seed,
                  "negatives": sum(e.card is None for e in examples), "cards": rows, "stored": []}
        if store:
            fitted_on = ", ".join(sorted({Path(e.source).name for e in examples}))
            for row in rows:
                report["stored"].append(_store(state, row, fitted_on, len(fit)))
    _show_fit(report, as_json)


class _session:
    """The service state of the home, its router, and the active knowledge cards (closed on exit)."""

    def __init__(self, ctx: typer.Context) -> None:
        self.ctx = ctx

    def __enter__(self):
        from api.card_knowledge import knowledge_stage
        from api.settings import ServiceSettings
        from api.state import ServiceState

        self.state = ServiceState(ServiceSettings(home=home_from(self.ctx).root))
        cards = [c for c in self.state.cards.active_cards() if "knowledge" in c.manifest.kind]
        if not cards:
            self.state.close()
            raise fail("no active knowledge card to route to; register one with mighty cards register",
                       EXIT_REJECTED)
        return self.state, _LazyRouter(lambda: knowledge_stage(self.state).router), cards

    def __exit__(self, *exc_info) -> None:
        self.state.close()


class _LazyRouter:
    """The service's router, built (embedder loaded) only when `load` is called: bad question files
    are refused before that cost."""

    def __init__(self, build) -> None:
        self._build = build

    def load(self):
        with err.status("loading the routing embedder"):
            return self._build()


def _examples(positives: list[str], negatives: list[Path], known: set[str]) -> list[RouteExample]:
    examples: list[RouteExample] = []
    try:
        for spec in positives:
            card, sep, path = spec.partition("=")
            if not sep or not card or not path:
                raise fail(f"--positives {spec!r}: write CARD=FILE, e.g. pg-essays=data/qa/pg-essays-qa.jsonl")
            if card not in known:
                raise fail(f"--positives {spec!r}: no active knowledge card named {card!r} (see mighty cards list)",
                           EXIT_REJECTED)
            examples += load_questions(Path(path), card)
        for path in negatives:
            examples += load_questions(path, None)
    except QuestionFileError as exc:
        raise fail(str(exc), EXIT_REJECTED) from None
    first: dict[str, str | None] = {}
    for example in examples:  # one question with two labels would count as right and wrong at once
        if first.setdefault(example.text, example.card) != example.card:
            raise fail(f"{example.source}: the question {example.text!r} is also labelled "
                       f"{first[example.text] or 'negative'} in another file", EXIT_REJECTED)
    return list({e.text: e for e in examples}.values())


def _score(router, cards, examples: list[RouteExample]) -> list[RouteScores]:
    with err.status(f"routing {len(examples)} questions"):
        return [RouteScores(e, router.score(e.text, cards)) for e in examples]


def _store(state, row: dict, fitted_on: str, fit_examples: int) -> str:
    """A new active version of the card carrying its fitted threshold (versions are immutable)."""
    from api.card_registry import operator_actor
    from experts.errors import CardError
    from experts.fusion.cards import next_version
    from experts.manifest import CardManifest, RoutingSettings

    current = state.cards.get(row["card"])
    taken = {ref.version for ref in state.cards.versions(row["card"])}
    version = next_version(current.manifest.version)
    while version in taken:
        version = next_version(version)
    after = row["heldout_after"]
    routing = RoutingSettings(threshold=row["threshold_after"], fitted_on=fitted_on, fit_examples=fit_examples,
                              heldout_precision=after["precision"], heldout_recall=after["recall"],
                              fitted_at=datetime.now(UTC))
    manifest = CardManifest.model_validate({**current.manifest.model_dump(), "version": version,
                                            "routing": routing.model_dump()})
    try:
        stored = state.cards.update_manifest(row["card"], manifest, operator_actor(), activate=True)
    except CardError as error:
        raise fail(f"storing the threshold of {row['card']!r}: {error}", EXIT_REJECTED) from None
    return f"{stored.name}@{stored.version}"


def _row(q: CardQuality) -> dict:
    return {"card": q.card, "threshold": q.threshold, "precision": q.precision, "recall": q.recall,
            "tp": q.true_positives, "fp": q.false_positives, "fn": q.false_negatives}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _show(report: dict, as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps(report))
        return
    table = Table("card", "threshold", "precision", "recall", "tp", "fp", "fn",
                  title=f"{title}: {report['questions']} questions, {report['negatives']} negatives")
    for row in report["cards"]:
        table.add_row(escape(row["card"]), f"{row['threshold']:.3f}", _pct(row["precision"]), _pct(row["recall"]),
                      str(row["tp"]), str(row["fp"]), str(row["fn"]))
    out.print(table)


def _show_fit(report: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report))
        return
    table = Table("card", "threshold", "held-out precision", "held-out recall", "fit precision", "fit recall",
                  title=f"route-fit: fitted on {report['fit_questions']} questions, reported on "
                        f"{report['heldout_questions']} held-out ({report['negatives']} negatives in all)")
    for row in report["cards"]:
        old, new, fit = row["heldout_before"], row["heldout_after"], row["fit_after"]
        table.add_row(escape(row["card"]), f"{row['threshold_before']:.3f} -> {row['threshold_after']:.3f}",
                      f"{_pct(old['precision'])} -> {_pct(new['precision'])}",
                      f"{_pct(old['recall'])} -> {_pct(new['recall'])}", _pct(fit["precision"]), _pct(fit["recall"]))
    out.print(table)
    for ref in report["stored"]:
        out.print(f"stored the fitted threshold as {ref} (active; mighty cards rollback undoes it)", highlight=False)
