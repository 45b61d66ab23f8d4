"""Compare the torch, onnx and onnx-int8 embedder backends: agreement, throughput, query latency.

Run from the repository root: `python benchmarks/embedder_backends.py` (see --help).

- Agreement: row-wise cosine against the torch vectors of the first 500 MS MARCO passages, and the
  share of torch's top-10 passages (50 MS MARCO queries over those 500) that each backend keeps.
- Throughput: passages/s encoding 2000 passages (title + "\\n" + text when there is a title), for each
  backend and batch size, after a warm-up. Runs are interleaved across configurations and repeated
  (--rounds); the best round is reported, because on a shared CPU the slow rounds measure neighbours.
- Latency: one `encode([query])` per call, 200 calls per backend (the 50 queries cycled) after 20
  warm-up calls, one backend at a time, repeated --rounds times; p50 and p90 (ms) of the best round.
The first onnx load includes the one-off export (and quantisation) unless it is already cached in
`$MIGHTY_HOME/models/onnx`; "load s" shows it.

`--indexing` measures end-to-end indexing instead (what issue 12's >= 150 passages/s target means):
for each of --backends (default onnx, onnx-int8), a fresh collection in a scratch home ingests the
first --passages MS MARCO passages (BEIR rows read as `mighty index add` reads them: chunking, BM25
analysis, embedding, writing, commit with its fusion calibration) and the wall time gives
passages/s. Embedders are loaded and warmed outside the clock; backends are interleaved per round
and the best of --rounds is kept.
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from indexes.collection import Home  # noqa: E402
from indexes.config import CollectionConfig, EmbedderConfig  # noqa: E402
from indexes.documents import SourceDocument  # noqa: E402
from indexes.embedders import Embedder, SentenceTransformerEmbedder, load_embedder  # noqa: E402
from indexes.onnx_embedder import OnnxEmbedder  # noqa: E402
from indexes.readers import read_jsonl_lines  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "msmarco"
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


def indexing_rates(corpus_file: Path, passages: int, backends: list[str], rounds: int) -> dict[str, float]:
    """Best end-to-end indexing passages/s per backend, each round a fresh collection per backend."""
    limit = CollectionConfig(name="limits").max_document_bytes
    with corpus_file.open("rb") as handle:
        rows = read_jsonl_lines(handle, str(corpus_file), limit)
        documents = [d for d in rows if isinstance(d, SourceDocument)][:passages]
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mighty-indexing-") as scratch:
        home = Home(Path(scratch))
        for backend in backends:  # load (export / quantise if not cached) and warm outside the clock
            load_embedder(EmbedderConfig(backend=backend)).encode([d.text for d in documents[:128]])  # type: ignore[arg-type]
        for round_ in range(rounds):
            for backend in backends:
                config = CollectionConfig(name=f"{backend}-{round_}", embedder=EmbedderConfig(backend=backend))  # type: ignore[arg-type]
                collection = home.open_or_create(config)
                started = time.perf_counter()
                with collection.writer() as writer:
                    for document in documents:
                        writer.upsert(document)
                    writer.commit()
                rate = len(documents) / (time.perf_counter() - started)
                best[backend] = max(best.get(backend, 0.0), round(rate, 1))
                print(f"  round {round_ + 1} {backend:9s}: {rate:7.1f} passages/s end to end", flush=True)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--passages", type=int, default=2000)
    parser.add_argument("--agreement", type=int, default=500)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--indexing", action="store_true", help="time end-to-end indexing instead (see above)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=["onnx", "onnx-int8"],
                        help="backends for --indexing")
    args = parser.parse_args()
    if args.indexing:
        rates = indexing_rates(args.data / "corpus.jsonl", args.passages, args.backends, args.rounds)
        print(f"\n{args.passages} passages, {os.cpu_count()} cores, "
              f"MIGHTY_EMBED_THREADS={os.environ.get('MIGHTY_EMBED_THREADS', '(all cores)')}, best of {args.rounds} rounds")
        for backend, rate in rates.items():
            print(f"{backend:10s} {rate:7.1f} passages/s end to end")
        print(json.dumps({"benchmark": "indexing", "passages": args.passages, "cores": os.cpu_count(),
                          "rounds": args.rounds, "passages_per_s": rates}))
        return

    passages = load_texts(args.data / "corpus.jsonl", max(args.passages, args.agreement))
    queries = load_texts(args.data / "queries.jsonl", 10**9)
    sample, corpus = passages[:args.agreement], passages[:args.passages]

    results: dict[str, dict] = {}
    embedders: dict[tuple[str, int], Embedder] = {}
    reference: tuple[np.ndarray, np.ndarray] | None = None
    for backend in BACKENDS:
        started = time.perf_counter()
        embedder = embedders[backend, 64] = make(backend, 64)
        load_s = time.perf_counter() - started
        vectors = embedder.encode(sample)
        top = np.argsort(-(embedder.encode(queries) @ vectors.T), axis=1)[:, :10]
        reference = reference or (vectors, top)
        cosines = np.sum(vectors * reference[0], axis=1)
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, reference[1])])
        results[backend] = {"load_s": round(load_s, 2), "cos_mean": round(float(cosines.mean()), 6),
                            "cos_min": round(float(cosines.min()), 6), "top10_overlap": round(float(overlap), 3),
                            "passages_per_s": {}}
        for batch_size in args.batch_sizes:
            embedders.setdefault((backend, batch_size), make(backend, batch_size))

    for round_ in range(args.rounds):
        for (backend, batch_size), embedder in embedders.items():
            embedder.encode(corpus[:batch_size * 2])  # warm-up: allocator, kernels, thread pools
            started = time.perf_counter()
            embedder.encode(corpus)
            rate = len(corpus) / (time.perf_counter() - started)
            best = results[backend]["passages_per_s"]
            best[batch_size] = max(best.get(batch_size, 0.0), round(rate, 1))
            print(f"  round {round_ + 1} {backend:9s} batch {batch_size:4d}: {rate:7.1f} passages/s", flush=True)

    # Latency in blocks, one backend at a time: interleaving call by call would time each backend
    # against the other runtime's thread pool still spinning (OpenMP keeps spinning ~200 ms).
    calls = [queries[i % len(queries)] for i in range(args.queries)]
    latency: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for backend in BACKENDS:
            embedder = embedders[backend, 64]
            for query in calls[:20]:
                embedder.encode([query])
            timings = []
            for query in calls:
                started = time.perf_counter()
                embedder.encode([query])
                timings.append((time.perf_counter() - started) * 1000)
            if backend not in latency or np.median(timings) < np.median(latency[backend]):
                latency[backend] = timings

    for backend, r in results.items():
        rates = r["passages_per_s"]
        r["best_batch"] = max(rates, key=rates.get)
        r["best_passages_per_s"] = rates[r["best_batch"]]
        r["latency_p50_ms"] = round(float(np.percentile(latency[backend], 50)), 2)
        r["latency_p90_ms"] = round(float(np.percentile(latency[backend], 90)), 2)
        r["passages_per_s"] = {str(k): v for k, v in rates.items()}

    print(f"\n{len(corpus)} passages, {os.cpu_count()} cores, best of {args.rounds} rounds; "
          f"agreement vs torch on {len(sample)} passages")
    sizes = " ".join(f"{'bs' + str(b):>7s}" for b in args.batch_sizes)
    header = f"{'backend':10s} {'cos mean':>9s} {'cos min':>8s} {'top10':>6s} {sizes} {'p50 ms':>7s} {'p90 ms':>7s} {'load s':>6s}"
    print(header + "\n" + "-" * len(header))
    for backend, r in results.items():
        rates = " ".join(f"{r['passages_per_s'][str(b)]:7.1f}" for b in args.batch_sizes)
        print(f"{backend:10s} {r['cos_mean']:9.6f} {r['cos_min']:8.6f} {r['top10_overlap']:6.3f} {rates} "
              f"{r['latency_p50_ms']:7.2f} {r['latency_p90_ms']:7.2f} {r['load_s']:6.2f}")
    print(json.dumps({"benchmark": "embedder_backends", "passages": len(corpus), "cores": os.cpu_count(),
                      "rounds": args.rounds, "results": results}))


if __name__ == "__main__":
    main()
