"""Ray scale-out benchmark on a 100k-chunk collection: query latency single-process vs shard
coordinator (in-process shards, Ray actors, Ray Serve over HTTP), ingestion passages/s with 1, 2, 4
embedding actors vs single-process, and a projection of hours to index 10M passages on N nodes.

Why the collection is synthetic: embedding 100k real chunks takes ~30 min on 2 cores. As in
`benchmarks/scale.py`, documents are sampled from the real MS MARCO unigram distribution and vectors
are real MS MARCO passage embeddings plus Gaussian noise, so only `--centres` passages are embedded.
Both collections (one folder, and `--shards` shards) hold the same documents and vectors, are built
once and cached under `--cache` (calibration off on both: sharded collections fuse with configured
weights). Ingestion speed is measured on real passages (`--ingest`), embedded for real.

    nice -n 19 .venv/bin/python benchmarks/ray_scale.py build            # once, ~3 min
    nice -n 19 .venv/bin/python benchmarks/ray_scale.py latency [--serve] [--queries 300]
    nice -n 19 .venv/bin/python benchmarks/ray_scale.py ingest [--ingest 2000] [--actors 1 2 4]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from indexes.collection import Home  # noqa: E402
from indexes.config import CollectionConfig, FusionConfig  # noqa: E402
from benchmarks.synthetic import upsert_one_chunk  # noqa: E402  (one home for the one-chunk upsert)

CACHE = Path("/work/bench-cache/rayserve")
SEED = 1234


def home(cache: Path, size: int) -> Path:
    return cache / f"home-{size}"


def build(args) -> None:
    from benchmarks.scale import Corpus

    root = home(args.cache, args.size)
    probe = Home(args.cache / "probe").open_or_create(CollectionConfig(name="vocab"))
    corpus = Corpus(probe.embedder, args.centres, args.cache)
    rng = np.random.default_rng(SEED)
    texts = corpus.texts(rng, args.size, 40, 80)
    vectors = corpus.vectors(rng, args.size)
    for name, shards in (("single", 1), (f"sharded{args.shards}", args.shards)):
        if (root / "collections" / name / "CURRENT").exists():
            print(f"{name}: cached", flush=True)
            continue
        collection = Home(root).create(CollectionConfig(name=name, shards=shards, fusion=FusionConfig(calibrate=False)))
        started = time.perf_counter()
        with collection.writer() as writer:
            for i, text in enumerate(texts):
                upsert_one_chunk(writer, f"d{i}", text, vectors[i:i + 1])
            writer.commit()
        print(f"{name}: {args.size} chunks in {time.perf_counter() - started:.1f} s", flush=True)


def _percentiles(times: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(times, 50)), 2), "p99_ms": round(float(np.percentile(times, 99)), 2)}


def latency(args) -> dict:
    """p50/p99 of `Retriever.search` (query vectors fixed per query, so retrieval alone is timed) on
    the same 100k chunks: one folder, S in-process shards, S Ray actors; with --serve, also
    /v1/retrieve over HTTP through Ray Serve (real query embedding in the embedder deployment)."""
    import ray

    from benchmarks.shards import FixedVectorRetriever, queries
    from indexes.ray_shards import RayShardedCollection, shard_resource
    from rag.schemas import RetrievalRequest

    root, sharded_name = home(args.cache, args.size), f"sharded{args.shards}"
    texts = queries(args.queries + 20)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             resources={shard_resource(i): 1 for i in range(args.shards)})
    single, sharded = Home(root).open("single"), Home(root).open(sharded_name)
    on_ray = RayShardedCollection(sharded, timeout_s=30)
    out: dict = {"chunks": sharded.stats()["chunks"], "shards": args.shards, "queries": args.queries, "retriever": {}}
    systems = {"single": single, f"{args.shards} local shards": sharded, f"{args.shards} Ray actors": on_ray}
    for mode in args.modes:  # systems take turns query by query, so a load swing hits them alike
        retrievers = {label: FixedVectorRetriever(collection) for label, collection in systems.items()}
        times: dict[str, list[float]] = {label: [] for label in systems}
        for position, text in enumerate(texts):
            for label, retriever in retrievers.items():
                started = time.perf_counter()
                retriever.search(RetrievalRequest(query=text, mode=mode))
                if position >= 20:  # the first 20 warm caches, numba and the actors' generation load
                    times[label].append((time.perf_counter() - started) * 1000)
        single_ms = np.asarray(times["single"])
        out["retriever"][mode] = {label: {**_percentiles(ms), "added_p50_ms": round(float(
            np.percentile(np.asarray(ms) - single_ms, 50)), 2)} for label, ms in times.items()}
        print(mode, out["retriever"][mode], flush=True)
    on_ray.close()
    if args.serve:
        out["serve_http"] = serve_latency(args, root, sharded_name, texts)
    ray.shutdown()
    return out


def serve_latency(args, root: Path, sharded_name: str, texts: list[str]) -> dict:
    """/v1/retrieve over HTTP through Ray Serve, for the single collection (searched in the ingress)
    and the sharded one (searched by its shard deployments)."""
    import httpx
    from ray import serve

    from api.ray_serve.deployments import ServeOptions
    from api.ray_serve.launch import start
    from api.settings import ServiceSettings

    port = 8765
    start(ServiceSettings(home=root, no_auth=True, host="127.0.0.1"), "local", "127.0.0.1", port,
          ServeOptions(timeout_s=30))
    out: dict = {}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        for mode in args.modes:
            out[mode] = {}
            for name in ("single", sharded_name):
                for text in texts[:20]:
                    client.post("/v1/retrieve", json={"collection": name, "query": text, "mode": mode})
                times = []
                for text in texts[20:]:
                    started = time.perf_counter()
                    answer = client.post("/v1/retrieve", json={"collection": name, "query": text + " ?", "mode": mode})
                    times.append((time.perf_counter() - started) * 1000)
                    answer.raise_for_status()
                out[mode][name] = _percentiles(times)
            print("serve", mode, out[mode], flush=True)
    serve.shutdown()
    return out


def ingest(args) -> dict:
    """Passages/s of `mighty index add` (chunk, embed, write a 2-shard collection) on real MS MARCO
    passages: one process, then Ray Data with 1, 2, 4 embedding actors on a local Ray (num_cpus=2)."""
    import tempfile

    import ray

    from benchmarks.shards import ingest_rate, passages

    documents = passages(args.ingest)
    cores = os.cpu_count() or 1
    out: dict = {"passages": len(documents), "cores": cores, "passages_per_s": {}}
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        single = ingest_rate(Path(tmp) / "single", documents, None)
        out["passages_per_s"]["single process"] = round(single, 1)
        print("single process", round(single, 1), flush=True)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        for actors in args.actors:
            rate = ingest_rate(Path(tmp) / f"ray{actors}", documents, actors)
            out["passages_per_s"][f"ray, {actors} actors"] = round(rate, 1)
            print(f"ray, {actors} actors", round(rate, 1), flush=True)
        ray.shutdown()
    out["per_core"] = {k: round(v / min(cores, 2), 1) for k, v in out["passages_per_s"].items()}
    out["ray_vs_single"] = {k: round(v / single, 2) for k, v in out["passages_per_s"].items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["build", "latency", "ingest"])
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--centres", type=int, default=300, help="real passages embedded as vector centres")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--modes", nargs="+", default=["bm25", "dense", "hybrid"])
    parser.add_argument("--serve", action="store_true", help="also time /v1/retrieve through Ray Serve")
    parser.add_argument("--ingest", type=int, default=2000, help="real passages embedded for the ingestion rates")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    result = {"build": build, "latency": latency, "ingest": ingest}[args.what](args)
    if result is not None:
        print(json.dumps(result))
        if args.json_out:
            args.json_out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
