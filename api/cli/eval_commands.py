"""`mighty eval retrieval DATASET_DIR`: quality and latency on a BEIR-format folder."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import typer

from api.cli.context import RichProgress, fail, home_from
from indexes.collection import Home
from indexes.config import CollectionConfig, EmbedderConfig
from rag.evaluation import BeirDataset, DatasetError, build_index, evaluate

app = typer.Typer(help="Measure retrieval quality.", no_args_is_help=True)


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
