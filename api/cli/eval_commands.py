"""`mighty eval retrieval DATASET_DIR` and `mighty eval answers QA.jsonl`: quality and latency."""
from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from pathlib import Path

import typer

from api.cli.context import EXIT_REJECTED, RichProgress, err, fail, home_from
from indexes.collection import Home
from indexes.config import CollectionConfig, EmbedderConfig
from rag.cascade_spec import is_cascade
from rag.evaluation import BeirDataset, DatasetError, build_index, evaluate

app = typer.Typer(help="Measure retrieval and answer quality.", no_args_is_help=True)


@app.command()
def retrieval(ctx: typer.Context, dataset: Path = typer.Argument(..., help="BEIR folder."),
              mode: str = typer.Option("hybrid", help="bm25 | dense | hybrid"),
              fusion: str = typer.Option(None, help="convex | rrf"),
              dense_weight: float = typer.Option(None),
              backend: str = typer.Option("onnx", help="Embedder backend: torch | onnx | onnx-int8."),
              no_cache: bool = typer.Option(False, "--no-cache", help="Index in a temporary home."),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Index the corpus (cached by content and settings), run every judged query, print metrics."""
    if mode not in ("bm25", "dense", "hybrid"):
        raise fail(f"--mode must be bm25, dense or hybrid, not {mode!r}")
    try:
        data = BeirDataset.load(dataset)
    except DatasetError as exc:
        raise fail(str(exc)) from None
    config = CollectionConfig(name="eval", embedder=EmbedderConfig(backend=backend))
    options = {k: v for k, v in {"fusion": fusion, "dense_weight": dense_weight}.items() if v is not None}
    with tempfile.TemporaryDirectory(prefix="mighty-eval-") as scratch:
        home = Home(Path(scratch)) if no_cache else Home(home_from(ctx).root / "eval-cache")
        with RichProgress() as progress:
            collection, rate = build_index(home, data, config, progress)
            report = evaluate(collection, data, mode, rate, progress, **options)
    if as_json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>22}  {value}")


@app.command()
def answers(ctx: typer.Context, qa: Path = typer.Argument(..., help="QA JSONL: id, question, answers, doc."),
            collection: str = typer.Option(..., "--collection", "-c"),
            llm: str = typer.Option(None, "--llm", help="LiteLLM model; default: the collection's, then the server's."),
            cards: str = typer.Option(None, help="auto | none | NAME[,NAME...]; default: the server's (auto)."),
            top_k: int = typer.Option(5, "--top-k", "-k", help="Hits retrieved per question."),
            api_base: str = typer.Option(None, help="OpenAI-compatible base URL for --llm."),
            api_key: str = typer.Option(None, envvar="MIGHTY_EVAL_API_KEY", help="Key for --api-base."),
            max_tokens: int = typer.Option(None, help="Answer token limit; default: the server's."),
            limit: int = typer.Option(None, min=1, help="Only the first N questions."),
            card_selectors: str = typer.Option(None, "--card-selectors",
                                               help='Knowledge selector overrides as JSON, as on /v1/query, '
                                                    'e.g. \'{"factuality": false}\'.'),
            settings: str = typer.Option(None, "--settings",
                                         help="Compare settings side by side: all, or some of alone, card, "
                                              "retrieval, retrieval+card (card settings use --cards)."),
            out: Path = typer.Option(None, "--out", help="Write one JSON line per question here."),
            as_json: bool = typer.Option(False, "--json")) -> None:
    """Answer every question through the service's answer pipeline and score the answers: accuracy,
    token F1, citation accuracy, retrieval hit@k, faithfulness, latency and tokens/s.

    With --settings the same questions are answered with and without retrieval and card knowledge,
    and one row per setting is printed (or one JSON object with a row per setting). With a cascade
    model the small model, its confidences and the large model run once per question and the
    threshold sweep is printed."""
    from api.answer_runs import (AnswerRun, RunRefused, _options, evaluate_answers, evaluate_settings,
                                 parse_settings)
    from api.settings import ServiceSettings
    from api.state import ServiceState
    from rag.answer_eval import QAError, load_qa, summarise

    if top_k < 1:
        raise fail("--top-k must be at least 1")
    try:
        chosen = parse_settings(settings) if settings is not None else None
    except RunRefused as exc:
        raise fail(str(exc)) from None
    try:
        items, rejected = load_qa(qa)
    except QAError as exc:
        raise fail(str(exc)) from None
    for line in rejected:
        err.print(line, highlight=False, markup=False)
    items = items[:limit] if limit else items
    if not items:
        raise fail(f"{qa}: no valid question to evaluate", code=EXIT_REJECTED)
    run = AnswerRun(collection, llm, _cards(cards), top_k, api_base, api_key, max_tokens,
                    selectors=_selectors(card_selectors))
    state = ServiceState(ServiceSettings(home=home_from(ctx).root))
    try:
        resolved = _options(state, run).model
    except RunRefused as exc:
        state.close()
        raise fail(str(exc)) from None
    if is_cascade(resolved) and chosen is not None:
        state.close()
        raise fail("--settings compares one answer model across settings; a cascade prints its own "
                   "threshold sweep: drop --settings or name a single --llm")
    if is_cascade(resolved):
        _cascade_answers(state, run, items, qa, out, as_json, rejected)
        return
    with _answer_run(state, out) as (progress, on_result):
        if chosen is not None:
            runs = evaluate_settings(state, run, chosen, items, progress, on_result=on_result)
        else:
            model, results = evaluate_answers(state, run, items, progress, on_result=on_result)
    if chosen is not None:
        report = settings_report(qa.name, collection, top_k, run.cards, runs)
        if as_json:
            print(json.dumps(report))
        else:
            _print_settings(report)
        if rejected or any(row["errors"] for row in report["settings"]):
            raise typer.Exit(EXIT_REJECTED)
        return
    report = {"qa": qa.name, "collection": collection, "model": model, "top_k": top_k, **summarise(results, top_k)}
    if as_json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>24}  {value}")
    if rejected or report["errors"]:
        raise typer.Exit(EXIT_REJECTED)


def _cascade_answers(state, run, items, qa: Path, out: Path | None, as_json: bool, rejected: list[str]) -> None:
    """A cascade: run small, confidences and large once per question, then print the swept curve."""
    from api.cascade_runs import evaluate_cascade
    from rag import cascade_curve

    with _answer_run(state, out) as (progress, on_record):
        model, records = evaluate_cascade(state, run, items, progress, on_record=on_record)
    report = cascade_curve_report(records, model)
    report = {"qa": qa.name, "collection": run.collection, "top_k": run.top_k, **report}
    if as_json:
        print(json.dumps(report))
    else:
        print(f"cascade {model} on {qa.name}: {len(records)} questions")
        for policy, points in report["curves"].items():
            rows = [cascade_curve.Point(**p) for p in [*report["baselines"], *points]]
            print(f"\npolicy {policy}\n{cascade_curve.table(rows)}")
    errors = sum(r.small.error is not None or r.large.error is not None for r in records)
    if rejected or errors:
        raise typer.Exit(EXIT_REJECTED)


def cascade_curve_report(records, model: str) -> dict:
    """Baselines, the curve of every policy that was scored, and the figures at the spec's threshold."""
    from rag import cascade_curve
    from rag.cascade_spec import parse

    spec = parse(model)
    small, large = cascade_curve.baselines(records)
    curves = {p: cascade_curve.as_dicts(cascade_curve.sweep(records, p)) for p in cascade_curve.policies(records)}
    chosen = (cascade_curve.as_dicts([cascade_curve.at(records, spec.policy, spec.threshold)])[0]
              if spec.policy in curves else None)
    overhead = {p: round(sum(r.overhead_ms.get(p, 0.0) for r in records) / max(len(records), 1), 1) for p in curves}
    return {"model": model, "questions": len(records), "baselines": cascade_curve.as_dicts([small, large]),
            "at_threshold": chosen, "policy_overhead_ms": overhead, "curves": curves}


def settings_report(qa: str, collection: str, top_k: int, cards, runs) -> dict:
    """One JSON object: the run's identity and one summary row per setting, in the order run."""
    from rag.answer_eval import summarise

    rows = [{"setting": r.setting.name, "sources": r.setting.retrieval, "knowledge": r.setting.cards,
             **summarise(r.results, top_k, retrieval=r.setting.retrieval)} for r in runs]
    return {"qa": qa, "collection": collection, "model": runs[0].model if runs else None, "top_k": top_k,
            "cards": cards, "settings": rows}


def _print_settings(report: dict) -> None:
    from rich.table import Table

    from api.cli.context import out

    def cell(value) -> str:
        return "-" if value is None else f"{value:.1%}" if isinstance(value, float) else str(value)

    top_k = report["top_k"]
    splits = sorted({key for row in report["settings"] for key in row if key.startswith("accuracy_")})
    table = Table("setting", "retrieval", "card knowledge", "accuracy", *[s.replace("accuracy_", "acc. ")
                  for s in splits], "F1", "citation acc.", f"hit@{top_k}", "knowledge used", "p50 ms", "errors",
                  title=f"{report['qa']} answered by {report['model']} (cards: {report['cards']})")
    for row in report["settings"]:
        table.add_row(row["setting"], "yes" if row["sources"] else "no", "yes" if row["knowledge"] else "no",
                      cell(row["accuracy"]), *[cell(row.get(s)) for s in splits], cell(row["f1"]),
                      cell(row["citation_accuracy"]), cell(row[f"hit@{top_k}"]),
                      cell(row["card_knowledge"]) if row["knowledge"] else "-",
                      "-" if row["p50_ms"] is None else f"{row['p50_ms']:.0f}", str(row["errors"]))
    out.print(table)


def _selectors(value: str | None):
    """`--card-selectors` JSON, validated by the same model as a request's `card_selectors`."""
    from pydantic import ValidationError

    from api.errors import describe
    from experts.selectors import SelectorSettings

    if value is None:
        return None
    try:
        return SelectorSettings.model_validate_json(value)
    except ValidationError as exc:
        raise fail(f"--card-selectors: {describe(exc)}") from None


def _cards(value: str | None):
    if value is None or value in ("auto", "none"):
        return value
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise fail("--cards must be auto, none or card names separated by commas")
    return names


@contextmanager
def _answer_run(state, out: Path | None):
    """Around one evaluation run: a progress bar, the per-answer JSONL sink (when `--out` is given),
    a refused run turned into an exit with its reason, and the service state closed whatever happens."""
    from api.answer_runs import RunRefused

    sink = open(out, "w", encoding="utf-8") if out else None
    try:
        with RichProgress() as progress:
            yield progress, _writer(sink)
    except RunRefused as exc:
        raise fail(str(exc)) from None
    finally:
        if sink:
            sink.close()
        state.close()


def _writer(sink):
    """Each answer is written as soon as it is scored, so a long run can be followed (and survives ^C)."""
    if sink is None:
        return None

    def write(result) -> None:
        sink.write(result.as_json() + "\n")
        sink.flush()
    return write
