"""Compare the torch, onnx and onnx-int8 embedder backends: agreement, throughput, query latency.

Run from the repository root: `python benchmarks/embedder_backends.py [--passages 2000]`.
Agreement is row-wise cosine against the torch embeddings of the first 500 MS MARCO passages, plus
how many of torch's top-10 passages (for the 50 MS MARCO queries over those 500) each backend keeps.
Throughput encodes 2000 passages once per batch size after a warm-up; latency is one `encode([q])`
call per query, 200 calls (the 50 queries cycled), after 20 warm-up calls. The first load of an onnx
backend includes the one-off export/quantisation unless `$MIGHTY_HOME/models/onnx` already has it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from indexes.config import EmbedderConfig  # noqa: E402
from indexes.embedders import Embedder, SentenceTransformerEmbedder  # noqa: E402
from indexes.onnx_embedder import OnnxEmbedder  # noqa: E402

DATA = Path("/work/shared/benchmarks/msmarco")
BACKENDS = ("torch", "onnx", "onnx-int8")


def load_texts(path: Path, limit: int) -> list[str]:
    texts = []
    with path.open() as fh:
        for line in fh:
            row = json.loads(line)
            title = row.get("title") or ""
            texts.append(f"{title}\n{row['text']}" if title else row["text"])
            if len(texts) == limit:
                break
    return texts


def make(backend: str, batch_size: int) -> Embedder:
    config = EmbedderConfig(backend=backend, batch_size=batch_size)  # type: ignore[arg-type]
    return SentenceTransformerEmbedder(config) if backend == "torch" else OnnxEmbedder(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--passages", type=int, default=2000)
    parser.add_argument("--agreement", type=int, default=500)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()

    passages = load_texts(args.data / "corpus.jsonl", max(args.passages, args.agreement))
    queries = load_texts(args.data / "queries.jsonl", 10**9)
    latency_queries = [queries[i % len(queries)] for i in range(args.queries)]
    sample = passages[:args.agreement]

    results: dict[str, dict] = {}
    reference: np.ndarray | None = None
    ref_top: np.ndarray | None = None
    for backend in BACKENDS:
        started = time.perf_counter()
        embedder = make(backend, 64)
        load_s = time.perf_counter() - started
        vectors = embedder.encode(sample)
        top = np.argsort(-(embedder.encode(queries) @ vectors.T), axis=1)[:, :10]
        if reference is None:
            reference, ref_top = vectors, top
        cosines = np.sum(vectors * reference, axis=1)
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, ref_top)])

        throughput = {}
        for batch_size in args.batch_sizes:
            embedder = make(backend, batch_size)
            embedder.encode(passages[:batch_size * 2])  # warm-up: allocator, kernels
            started = time.perf_counter()
            embedder.encode(passages[:args.passages])
            throughput[batch_size] = args.passages / (time.perf_counter() - started)
            print(f"  {backend:9s} batch {batch_size:4d}: {throughput[batch_size]:7.1f} passages/s", flush=True)

        for query in latency_queries[:20]:
            embedder.encode([query])
        timings = []
        for query in latency_queries:
            started = time.perf_counter()
            embedder.encode([query])
            timings.append((time.perf_counter() - started) * 1000)
        best = max(throughput, key=throughput.get)
        results[backend] = {
            "load_s": round(load_s, 2),
            "cos_mean": float(cosines.mean()), "cos_min": float(cosines.min()),
            "top10_overlap": float(overlap),
            "passages_per_s": {str(k): round(v, 1) for k, v in throughput.items()},
            "best_batch": best, "best_passages_per_s": round(throughput[best], 1),
            "latency_p50_ms": round(statistics.median(timings), 2),
            "latency_p90_ms": round(float(np.percentile(timings, 90)), 2),
        }

    print(f"\n{len(passages[:args.passages])} passages, {os.cpu_count()} cores; agreement vs torch on {len(sample)}")
    header = f"{'backend':10s} {'cos mean':>9s} {'cos min':>8s} {'top10':>6s} {'best p/s':>9s} {'batch':>5s} {'p50 ms':>7s} {'p90 ms':>7s} {'load s':>6s}"
    print(header)
    print("-" * len(header))
    for backend, r in results.items():
        print(f"{backend:10s} {r['cos_mean']:9.6f} {r['cos_min']:8.6f} {r['top10_overlap']:6.3f} "
              f"{r['best_passages_per_s']:9.1f} {r['best_batch']:5d} {r['latency_p50_ms']:7.2f} "
              f"{r['latency_p90_ms']:7.2f} {r['load_s']:6.2f}")
    print(json.dumps({"benchmark": "embedder_backends", "passages": args.passages,
                      "cores": os.cpu_count(), "results": results}))


if __name__ == "__main__":
    main()
