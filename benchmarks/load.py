"""Load benchmark: /v1/retrieve on a real `mighty serve` process with a 100k-chunk collection.

An asyncio client (httpx) keeps 1, 8 and 32 requests in flight for a fixed time each and reports
requests/s and latency percentiles. Every query string is distinct, so each request pays for its
query embedding (the Retriever's query cache never hits). The collection is synthetic (see
scale.py) and cached under --home, so reruns skip the build.

    .venv/bin/python benchmarks/load.py [--chunks 100000] [--clients 1 8 32] [--seconds 20]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from scale import SEED, Corpus, build_synthetic  # noqa: E402

from indexes.collection import Home  # noqa: E402
from indexes.config import CollectionConfig  # noqa: E402
from indexes.embedders import load_embedder  # noqa: E402
from rag.metrics import percentile  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def ensure_collection(home: Path, chunks: int) -> str:
    name = f"load{chunks}"
    if name in Home(home).names():
        return name
    config = CollectionConfig(name=name)
    corpus = Corpus(load_embedder(config.embedder), 1000, RESULTS)
    rng = np.random.default_rng(SEED + chunks)
    print(f"building {chunks} synthetic chunks in {home} ...", file=sys.stderr)
    seconds, written = build_synthetic(home, config, corpus.texts(rng, chunks, 40, 80), corpus.vectors(rng, chunks))
    print(f"built {written} chunks in {seconds:.0f} s", file=sys.stderr)
    return name


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(home: Path, port: int, workers: int) -> subprocess.Popen:
    env = {**os.environ, "MIGHTY_HOME": str(home), "MIGHTY_RATE_LIMIT_PER_MINUTE": "0"}
    process = subprocess.Popen([sys.executable, "-m", "api.cli.main", "serve", "--port", str(port), "--no-auth",
                                "--workers", str(workers)],
                               cwd=Path(__file__).resolve().parents[1], env=env)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("server did not come up within 300 s")


async def level(base: str, collection: str, clients: int, seconds: float, queries: list[str]) -> dict:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(10**9))
    stop_at = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            i = next(counter)
            body = {"query": f"{queries[i % len(queries)]} {i}", "collection": collection, "top_k": 10}
            started = time.perf_counter()
            response = await client.post("/v1/retrieve", json=body)
            latencies.append((time.perf_counter() - started) * 1000)
            errors += response.status_code != 200

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return {"clients": clients, "requests": len(latencies), "errors": errors,
            "rps": round(len(latencies) / elapsed, 1), "p50_ms": round(percentile(latencies, 50), 2),
            "p99_ms": round(percentile(latencies, 99), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--home", type=Path, default=RESULTS / "load-home")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    args = parser.parse_args()
    collection = ensure_collection(args.home, args.chunks)
    queries = [json.loads(line)["text"] for line in
               (Path(__file__).resolve().parents[2] / "shared/benchmarks/msmarco/queries.jsonl").read_text().split("\n") if line]
    port = free_port()
    server = start_server(args.home, port, args.workers)
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(level(base, collection, 2, 3, queries))  # warm-up
        rows = [asyncio.run(level(base, collection, c, args.seconds, queries)) for c in args.clients]
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"{'clients':>8}{'requests':>10}{'errors':>8}{'req/s':>9}{'p50 ms':>10}{'p99 ms':>10}")
    for row in rows:
        print(f"{row['clients']:>8}{row['requests']:>10}{row['errors']:>8}{row['rps']:>9}{row['p50_ms']:>10}{row['p99_ms']:>10}")
    print(json.dumps({"load": {"chunks": args.chunks, "endpoint": "/v1/retrieve", "mode": "hybrid",
                                "workers": args.workers, "levels": rows}}))


if __name__ == "__main__":
    main()
