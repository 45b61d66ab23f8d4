"""`mighty cascade fit` and `mighty cascade train-router`: cascades configured from measured answers.

Both read the per-question records `mighty eval answers --llm cascade:... --out FILE` writes, so the
expensive part (running both models once per question) is never repeated to try another target.
"""
from __future__ import annotations

import json
from pathlib import Path

import typer

from api.cli.context import EXIT_REJECTED, err, fail, home_from
from indexes.collection import CollectionNotFound

app = typer.Typer(help="Configure model cascades (small model first, large one when unsure).", no_args_is_help=True)


def _records(results: Path):
    from rag.cascade_curve import load_records

    if not results.is_file():
        raise fail(f"{results}: no such file")
    try:
        records, rejected = load_records(results)
    except UnicodeDecodeError as exc:
        raise fail(f"{results}: invalid UTF-8 ({exc.reason})") from None
    for line in rejected:
        err.print(line, highlight=False, markup=False)
    if not records:
        raise fail(f"{results}: no cascade record; write them with `mighty eval answers QA --llm cascade:... --out FILE`")
    cascades = {r.cascade for r in records}
    if len(cascades) != 1:
        raise fail(f"{results}: records of several cascades ({', '.join(sorted(cascades))}); fit one at a time")
    return records


def _collection(ctx: typer.Context, name: str):
    try:
        return home_from(ctx).open(name)
    except CollectionNotFound as exc:
        raise fail(str(exc)) from None


@app.command()
def fit(ctx: typer.Context, results: Path = typer.Argument(..., help="Records from `mighty eval answers --llm cascade:... --out`."),
        collection: str = typer.Option(..., "--collection", "-c", help="Collection whose default LLM becomes the cascade."),
        policy: str = typer.Option(None, help="verify | faithfulness | router; default: the evaluated cascade's."),
        target_accuracy: float = typer.Option(None, help="Lowest acceptable accuracy (0-1)."),
        target_relative: float = typer.Option(None, help="Lowest acceptable share of always-large accuracy (0-1)."),
        budget: float = typer.Option(None, help="Highest acceptable share of questions sent to the large model (0-1)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the choice; store nothing."),
        as_json: bool = typer.Option(False, "--json")) -> None:
    """Pick the threshold that meets an accuracy target with the fewest escalations (or the most accurate
    one within a budget) and store the cascade, with it, as the collection's default LLM."""
    from rag import cascade_curve
    from rag.cascade_spec import POLICIES, CascadeSpec, parse

    targets = [v for v in (target_accuracy, target_relative, budget) if v is not None]
    if len(targets) == 0 or (budget is not None and len(targets) > 1):
        raise fail("give --budget, or --target-accuracy and/or --target-relative")
    if not all(0.0 <= v <= 1.0 for v in targets):
        raise fail("targets and budgets are shares between 0 and 1")
    if policy is not None and policy not in POLICIES:
        raise fail(f"unknown policy {policy!r}; use one of {', '.join(POLICIES)}")
    records = _records(results)
    spec = parse(records[0].cascade)
    policy = policy or spec.policy
    if policy not in cascade_curve.policies(records):
        raise fail(f"{results}: the records have no {policy} confidence for every question"
                   + (" (train a router, then evaluate again)" if policy == "router" else ""))
    target = _collection(ctx, collection)
    point = cascade_curve.fit(records, policy, target_accuracy, target_relative, budget)
    if point is None:
        small, large = cascade_curve.baselines(records)
        err.print(f"no threshold meets the target: always-small {small.accuracy:.3f}, always-large "
                  f"{large.accuracy:.3f} accuracy", highlight=False, markup=False)
        raise typer.Exit(EXIT_REJECTED)
    chosen = parse(CascadeSpec(spec.small, spec.large, policy, point.threshold, spec.samples).model_string())
    stored = False
    if not dry_run:
        home_from(ctx).update_config(target.name, default_llm=chosen.model_string())
        stored = True
    report = {"collection": collection, "default_llm": chosen.model_string(), "stored": stored,
              "questions": len(records), **cascade_curve.as_dicts([point])[0]}
    if as_json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>18}  {value}")


@app.command("train-router")
def train_router(ctx: typer.Context,
                 results: Path = typer.Argument(..., help="Records from `mighty eval answers --llm cascade:... --out`."),
                 collection: str = typer.Option(..., "--collection", "-c", help="Collection the router serves."),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """Train the router policy's classifier (query embedding -> is the small model right?) and store it,
    as JSON, with the collection."""
    from indexes.embedders import encode_queries
    from rag import cascade_router

    records = _records(results)
    target = _collection(ctx, collection)
    vectors = encode_queries(target.embedder, [r.question for r in records])
    try:
        router = cascade_router.train(vectors, [r.small.correct for r in records], target.config.embedder.model,
                                      records[0].small_model)
    except cascade_router.RouterError as exc:
        raise fail(str(exc), code=EXIT_REJECTED) from None
    path = cascade_router.save(router, target.folder)
    fitted = sum((router.confidence(v) >= 0.5) == r.small.correct for v, r in zip(vectors, records)) / len(records)
    report = {"collection": collection, "small": router.small, "trained_on": router.trained_on,
              "small_correct": router.positives, "training_accuracy": round(fitted, 4), "stored": path.name}
    if as_json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>18}  {value}")
