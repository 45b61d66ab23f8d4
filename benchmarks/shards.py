"""Scale-out benchmark: query latency through the shard coordinator, and ingestion on Ray.

Query latency: the same passages (MS MARCO, vectors random but fixed, so no embedder runs and only
retrieval is timed) in one folder, in S local shards, and in S shards behind Ray actors on this
machine; p50/p99 of `Retriever.search` per mode. Ingestion: passages/s with the real embedder in
one process and on a Ray Data pool of 1, 2 (and 4) actors, with the per-core efficiency.

    .venv/bin/python benchmarks/shards.py [--passages 5000] [--shards 4] [--queries 200]
                                          [--ingest 400] [--actors 1 2 4] [--json-out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from indexes.collection import Home  # noqa: E402
from indexes.config import CollectionConfig  # noqa: E402
from indexes.documents import SourceDocument  # noqa: E402
from rag.retriever import Retriever  # noqa: E402
from rag.schemas import RetrievalRequest  # noqa: E402

MSMARCO = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "msmarco"


class FixedVectorRetriever(Retriever):
    """Query vectors drawn once per query string: retrieval is timed, not the embedder."""

    def embed_query(self, query: str) -> np.ndarray:
        vector = np.random.default_rng(abs(hash(query)) % 2**32).standard_normal(384).astype(np.float32)
        return vector / np.linalg.norm(vector)


def passages(limit: int) -> list[SourceDocument]:
    with open(MSMARCO / "corpus.jsonl", encoding="utf-8") as handle:
        rows = [json.loads(line) for _, line in zip(range(limit), handle)]
    return [SourceDocument(r["_id"], r["text"], r.get("title", "")) for r in rows]


def queries(limit: int) -> list[str]:
    with open(MSMARCO / "queries.jsonl", encoding="utf-8") as handle:
        return [json.loads(line)["text"] for _, line in zip(range(limit), handle)]


def build(root: Path, shards: int, documents: list[SourceDocument]):
    collection = Home(root).create(CollectionConfig(name="bench", shards=shards))
    rng = np.random.default_rng(0)
    with collection.writer() as writer:
        for document in documents:
            count = len(collection.chunker.split(document))
            vectors = rng.standard_normal((count, 384)).astype(np.float32)
            writer.upsert(document, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
        writer.commit()
    return Home(root).open("bench")


def latency(collection, texts: list[str], mode: str) -> dict:
    retriever = FixedVectorRetriever(collection)
    for text in texts[:10]:  # warm caches and JIT
        retriever.search(RetrievalRequest(query=text, mode=mode))
    times = []
    for text in texts:
        started = time.perf_counter()
        retriever.search(RetrievalRequest(query=text, mode=mode))
        times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(float(np.percentile(times, 50)), 2), "p99_ms": round(float(np.percentile(times, 99)), 2)}


def ingest_rate(root: Path, documents: list[SourceDocument], actors: int | None) -> float:
    from api.cli.index_commands import ingest

    source = root / "in.jsonl"
    root.mkdir(parents=True, exist_ok=True)
    source.write_text("".join(json.dumps({"_id": d.id, "text": d.text}) + "\n" for d in documents), encoding="utf-8")
    collection = Home(root).create(CollectionConfig(name="ingest", shards=2))
    if actors is None:
        collection.embedder.encode(["warm up"])  # model loading is not ingestion
    started = time.perf_counter()
    ingest(collection, [str(source)], "reading", None if actors is None else "local", actors or 1)
    return len(documents) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--passages", type=int, default=5000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ingest", type=int, default=400)
    parser.add_argument("--actors", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    import ray

    from indexes.ray_shards import RayShardedCollection, shard_resource

    out: dict = {"passages": args.passages, "shards": args.shards, "latency": {}, "ingest_passages_per_s": {}}
    with tempfile.TemporaryDirectory() as tmp:
        documents, texts = passages(args.passages), queries(args.queries)
        single = build(Path(tmp) / "single", 1, documents)
        sharded = build(Path(tmp) / "sharded", args.shards, documents)
        out["chunks"] = single.stats()["chunks"]
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 resources={shard_resource(i): 1 for i in range(args.shards)})
        on_ray = RayShardedCollection(sharded, timeout_s=30)
        for mode in ("bm25", "dense", "hybrid"):
            out["latency"][mode] = {"single": latency(single, texts, mode),
                                    f"{args.shards} local shards": latency(sharded, texts, mode),
                                    f"{args.shards} Ray actors": latency(on_ray, texts, mode)}
            print(mode, out["latency"][mode], flush=True)
        on_ray.close()
        ingest_docs = passages(args.passages + args.ingest)[args.passages:]
        out["ingest_passages_per_s"]["single process"] = round(ingest_rate(Path(tmp) / "i0", ingest_docs, None), 1)
        for actors in args.actors:
            rate = ingest_rate(Path(tmp) / f"i{actors}", ingest_docs, actors)
            out["ingest_passages_per_s"][f"ray, {actors} actors"] = round(rate, 1)
        print(out["ingest_passages_per_s"], flush=True)
        ray.shutdown()
    print(json.dumps(out))
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
