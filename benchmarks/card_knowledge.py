"""Knowledge-card latency and selector yield on held-out pg-essays questions.

Run from the repository root: `python benchmarks/card_knowledge.py --card PATH` (a card folder with
card.toml, e.g. one written by `mighty cards train`; see --help).

The corpus is indexed once into a temporary collection (the card's fact-check collection). Queries
are built from the card's held-out essay titles, so the card never saw the essays it is asked about,
while the collection holds them: what survives the factuality selector is backed by real text.
For every query the stage runs twice: cold (the card writes k passages) and cached. Reported: the
write latency (ms per card and query), the whole stage latency, and what each selector kept.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experts.card_knowledge import CardKnowledge  # noqa: E402
from experts.knowledge import KnowledgeWriter  # noqa: E402
from experts.manifest import CardManifest, load_manifest  # noqa: E402
from experts.routing import CardRouter  # noqa: E402
from indexes.collection import Home  # noqa: E402
from indexes.config import CollectionConfig  # noqa: E402
from indexes.readers import read_paths  # noqa: E402
from rag.retriever import Retriever  # noqa: E402
from rag.schemas import RetrievalRequest  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "pg-essays" / "corpus.jsonl"
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Card:
    manifest: CardManifest
    path: Path


class OneCard:
    def __init__(self, card: Card) -> None:
        self.card = card

    def active_cards(self) -> list[Card]:
        return [self.card]

    def get(self, name: str, version: str | None = None) -> Card:
        return self.card


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--card", type=Path, required=True, help="card folder (card.toml + adapter/)")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--queries", type=int, default=12)
    parser.add_argument("--home", type=Path, default=None, help="reuse an indexed home (default: a temp one)")
    args = parser.parse_args()

    manifest = load_manifest(args.card)
    card = Card(manifest, args.card)
    titles = list(manifest.heldout.documents) if manifest.heldout else []
    if not titles:
        sys.exit(f"{args.card}: the manifest records no held-out documents; train the card with mighty cards train")
    queries = [f"What does Paul Graham argue in his essay \"{title}\"?" for title in titles[:args.queries]]

    home = Home(args.home or Path(tempfile.mkdtemp(prefix="bench-cards-")))
    started = time.perf_counter()
    if "pg" not in home.names():
        collection = home.create(CollectionConfig(name="pg"))
        with collection.writer() as writer:
            for document in read_paths([str(args.corpus)], collection.config.max_document_bytes):
                writer.upsert(document)
            writer.commit()
    index_s = time.perf_counter() - started
    retriever = Retriever(home.open("pg"))
    embedder = retriever.collection.embedder
    tokenizer = retriever.collection.chunker.tokenizer

    def encode(texts):
        return embedder.encode(list(texts))

    def evidence(_card, texts):
        found = []
        for text in texts:
            found += [h.text for h in retriever.search(RetrievalRequest(query=text[:1000], top_k=3)).hits]
        return list(dict.fromkeys(found)), None

    stage = CardKnowledge(OneCard(card), encode, lambda t: len(tokenizer.encode(t, add_special_tokens=False).ids),
                          CardRouter(encode, lambda c: None), KnowledgeWriter(), evidence=evidence)
    rows = []
    for query in queries:
        request_evidence = [h.text for h in retriever.search(RetrievalRequest(query=query, top_k=5)).hits]
        cold_started = time.perf_counter()
        result = stage.run(query, [manifest.name], request_evidence)
        cold_ms = (time.perf_counter() - cold_started) * 1000
        warm_started = time.perf_counter()
        stage.run(query, [manifest.name], request_evidence)
        warm_ms = (time.perf_counter() - warm_started) * 1000
        report = result.cards[0]
        rows.append({"query": query, "write_ms": report.write_ms, "stage_ms": round(cold_ms, 1),
                     "cached_stage_ms": round(warm_ms, 1), "passages": report.generated,
                     "relevant": report.relevance["kept"], "sentences": report.pruning["sentences_kept"],
                     "supported": report.factuality["supported"], "unsupported": report.factuality["unsupported"],
                     "used": report.used, "text": result.items[0].text if result.items else ""})

    writes = [r["write_ms"] for r in rows]
    summary = {
        "card": manifest.ref, "queries": len(rows), "passages_per_query": manifest.generation.passages,
        "max_new_tokens": manifest.generation.max_new_tokens, "index_seconds": round(index_s, 1),
        "write_ms_mean": round(statistics.mean(writes), 1), "write_ms_p50": round(percentile(writes, 0.5), 1),
        "write_ms_p95": round(percentile(writes, 0.95), 1),
        "stage_ms_mean": round(statistics.mean(r["stage_ms"] for r in rows), 1),
        "cached_stage_ms_mean": round(statistics.mean(r["cached_stage_ms"] for r in rows), 1),
        "sentences_checked": sum(r["supported"] + r["unsupported"] for r in rows),
        "sentences_supported": sum(r["supported"] for r in rows),
        "queries_with_knowledge": sum(r["used"] for r in rows),
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
    }
    print(f"{'write ms':>9} {'stage ms':>9} {'cached':>7} {'k':>2} {'rel':>3} {'sent':>4} {'ok':>3} {'drop':>4}  query")
    for r in rows:
        print(f"{r['write_ms']:>9.0f} {r['stage_ms']:>9.0f} {r['cached_stage_ms']:>7.0f} {r['passages']:>2} "
              f"{r['relevant']:>3} {r['sentences']:>4} {r['supported']:>3} {r['unsupported']:>4}  {r['query'][:60]}")
    print(json.dumps(summary, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "card_knowledge.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
