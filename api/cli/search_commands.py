"""`mighty search` and `mighty demo`."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from pydantic import ValidationError

from api.cli.context import EXIT_EMBEDDER_CHANGED, err, fail, home_from, out
from api.cli.index_commands import ingest, open_collection
from api.errors import describe
from indexes.collection import CollectionBroken
from indexes.embedder_check import EmbedderChanged, EmbedderIncompatible
from indexes.config import CollectionConfig
from rag.retriever import Retriever
from rag.schemas import RetrievalRequest, RetrievalResult

DEMO_QUERY = "How does Mighty keep serving queries if indexing crashes?"


def search(ctx: typer.Context, query: str = typer.Argument(...),
           collection: str = typer.Option(..., "--collection", "-c"),
           mode: str = typer.Option("hybrid", help="bm25 | dense | hybrid"),
           top_k: int = typer.Option(10, "--top-k", "-k"),
           fusion: str = typer.Option(None, help="convex | rrf (default: the collection's)"),
           dense_weight: float = typer.Option(None, help="Convex weight of dense retrieval, 0..1."),
           no_adaptive: bool = typer.Option(False, "--no-adaptive", help="Use the weights as given."),
           candidates: int = typer.Option(None, help="Hits taken from each retriever before fusion."),
           filter_json: str = typer.Option(None, "--filter", help='Metadata filter, e.g. \'{"lang": {"in": ["en"]}}\''),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """Search a collection and print ranked, citable chunks."""
    try:
        filters = json.loads(filter_json) if filter_json else None
        request = RetrievalRequest(query=query, collection=collection, mode=mode, top_k=top_k, fusion=fusion,
                                   dense_weight=dense_weight, adaptive=False if no_adaptive else None,
                                   candidates=candidates, filters=filters)
    except json.JSONDecodeError as exc:
        raise fail(f"--filter is not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise fail("--filter is nested too deeply (a filter is field -> value or {\"in\": [values]})") from None
    except ValidationError as exc:
        raise fail(describe(exc)) from None
    try:
        result = Retriever(open_collection(ctx, collection)).search(request)
    except (ValueError, CollectionBroken) as exc:  # a filter the store cannot express; a broken collection
        raise fail(str(exc)) from None
    except EmbedderIncompatible as exc:  # dense/hybrid over vectors another embedder made; BM25 still works
        raise fail(str(exc), EXIT_EMBEDDER_CHANGED) from None
    if as_json:
        print(result.model_dump_json())
    else:
        show(result)


def demo(ctx: typer.Context, docs: Path = typer.Option(Path("data/docs"), help="Folder to index."),
         query: str = typer.Option(DEMO_QUERY, help="Question to retrieve for."),
         collection: str = typer.Option("demo"),
         serve: bool = typer.Option(True, "--serve/--no-serve", help="Start the REST service afterwards."),
         port: int = typer.Option(8000, help="Port for the service (loopback only, no key needed).")) -> None:
    """The main job on embedded defaults: index the demo corpus, answer a retrieval query from the
    CLI, then serve cited answers over REST on 127.0.0.1."""
    if not docs.is_dir():
        raise fail(f"{docs}: no such folder; run from the repository root or pass --docs PATH")
    home = home_from(ctx)
    try:
        target = home.open_or_create(CollectionConfig(name=collection))
    except ValidationError as exc:
        raise fail(describe(exc)) from None
    try:
        ingest(target, [str(docs)], f"indexing {docs}")
    except EmbedderChanged as exc:
        raise fail(str(exc), EXIT_EMBEDDER_CHANGED) from None
    snapshot = target.snapshot()
    out.print(f"collection {collection!r}: {snapshot.manifest.documents} documents, {snapshot.manifest.chunks} chunks, "
              f"generation {snapshot.generation}, home {home.root}")
    show(Retriever(target).search(RetrievalRequest(query=query, top_k=5)))
    if not serve:
        return
    from api.settings import ServiceSettings
    from rag.runtime import get_model

    default_llm = ServiceSettings().default_llm  # what the server will answer with (MIGHTY_DEFAULT_LLM)
    if default_llm.startswith("local/"):
        err.print(f"loading the embedded LLM {default_llm}")
        get_model(default_llm.split("/", 1)[1])
    out.print(f"try:  curl -s localhost:{port}/v1/query -H 'content-type: application/json' "
              f"-d '{{\"query\": \"{query}\", \"collection\": \"{collection}\"}}'", highlight=False)
    from api.cli.serve_commands import run_service

    run_service(ctx, host="127.0.0.1", port=port, no_auth=True)


def show(result: RetrievalResult) -> None:
    out.print(f"[bold]{result.query}[/]  ({result.mode}, {len(result.hits)} hits, "
              f"{result.timings_ms.get('total', 0):.1f} ms, generation {result.generation})", highlight=False)
    for rank, hit in enumerate(result.hits, start=1):
        found = " ".join(f"{name}#{r.rank}" for name, r in hit.found_by.items() if r.rank)
        snippet = " ".join(hit.text.split())
        snippet = snippet[:240] + ("…" if len(snippet) > 240 else "")
        out.print(f"[bold][{rank}][/] {hit.score:.3f}  [cyan]{hit.id}[/] chars {hit.span[0]}-{hit.span[1]}"
                  f"  {hit.title}  [dim]({found})[/]\n    {snippet}", highlight=False)
