"""Scale benchmark: Mighty BM25 / dense / hybrid latency and memory at 100k-1M chunks.

Why synthetic data: we have no million-passage corpus locally, and embedding one on CPU would
take hours. Documents are sampled from the real msmarco unigram distribution (Zipfian, like real
text) and dense vectors are real msmarco passage embeddings plus Gaussian noise, so nothing but
the queries is embedded. Query latency for dense/hybrid goes through `Retriever` and includes real
query embedding (every query string is distinct, so the Retriever's query cache never hits).

Reference systems in the same process and on the same data: rank-bm25 (BM25Okapi, tokens from
Mighty's own analyzer) and flat FAISS (IndexFlatIP, exact), which also gives dense recall@10.

    .venv/bin/python benchmarks/scale.py --sizes 100000 1000000 [--queries 200] [--json-out PATH]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
from rank_bm25 import BM25Okapi  # noqa: E402

from indexes.collection import Collection, Home  # noqa: E402
from indexes.config import CollectionConfig, DenseConfig  # noqa: E402
from indexes.documents import SourceDocument  # noqa: E402
from rag.retriever import Retriever  # noqa: E402
from rag.schemas import RetrievalRequest  # noqa: E402

MSMARCO = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "msmarco"
SEED = 1234
NOISE_SIGMA = 0.05
WARMUP = 10
RANK_BM25_RAM_LIMIT = 12 * 2**30  # skip rank-bm25 when its projected RSS exceeds this


def rss() -> int:
    """Resident set size in bytes (psutil is not installed, so read /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def gib(n: float) -> float:
    return round(n / 2**30, 3)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def stats(ms: list[float]) -> dict[str, float]:
    """p50/p95/p99 and sequential single-client QPS from per-query latencies in ms."""
    a = np.asarray(ms, dtype=np.float64)
    return {"n": len(a), "p50": round(float(np.percentile(a, 50)), 2), "p95": round(float(np.percentile(a, 95)), 2),
            "p99": round(float(np.percentile(a, 99)), 2), "mean": round(float(a.mean()), 2),
            "qps": round(1000.0 / float(a.mean()), 1)}


class Corpus:
    """Unigram vocabulary and passage embeddings from the real msmarco sample, shared by all sizes."""

    def __init__(self, embedder, n_passages: int, cache: Path) -> None:
        passages = read_jsonl(MSMARCO / "corpus.jsonl")
        counts = Counter(w for p in passages for w in p["text"].lower().split())
        self.word_list = list(counts.keys())
        self.words = np.array(self.word_list)
        freq = np.array(list(counts.values()), dtype=np.float64)
        self.p = freq / freq.sum()
        self.real_queries = [q["text"] for q in read_jsonl(MSMARCO / "queries.jsonl")]
        started = time.perf_counter()
        cache = cache / f"msmarco_passage_vectors_{n_passages}.npy"  # CPU embedding is slow (~75 ms/passage)
        if cache.exists():
            vectors = np.load(cache)
        else:
            vectors = embedder.encode([p["text"] for p in passages[:n_passages]])
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, vectors)
        self.passage_vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
        self.embed_seconds = time.perf_counter() - started

    def texts(self, rng: np.random.Generator, n: int, low: int, high: int) -> list[str]:
        lengths = rng.integers(low, high + 1, n)
        # int indices + a Python word list: a numpy '<U' array of 60M words would need ~24 GB
        ids = rng.choice(len(self.words), size=int(lengths.sum()), p=self.p).astype(np.int32).tolist()
        words, bounds = self.word_list, np.concatenate([[0], np.cumsum(lengths)]).tolist()
        return [" ".join([words[j] for j in ids[bounds[i]:bounds[i + 1]]]) for i in range(n)]

    def vectors(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Each doc: a random real passage vector plus N(0, sigma) noise per dim, renormalised."""
        out = np.empty((n, self.passage_vectors.shape[1]), dtype=np.float32)
        for start in range(0, n, 100_000):
            stop = min(n, start + 100_000)
            base = self.passage_vectors[rng.integers(0, len(self.passage_vectors), stop - start)]
            v = base + rng.normal(0, NOISE_SIGMA, base.shape).astype(np.float32)
            out[start:stop] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return out


def top10_ids(hits) -> list[str]:
    return [h.id for h in hits]


def overlap(a: list[list[str]], b: list[list[str]]) -> float:
    return round(float(np.mean([len(set(x) & set(y)) / max(1, len(y)) for x, y in zip(a, b)])), 4)


def build_synthetic(root: Path, config: CollectionConfig, texts: list[str], vectors: np.ndarray) -> tuple[float, int]:
    """Index single-chunk documents with precomputed vectors; returns (seconds, chunks written)."""
    collection = Home(root).create(config)
    collection.chunker, collection.analyzer  # load tokenizer before timing the build
    started = time.perf_counter()
    with collection.writer() as writer:
        for i, text in enumerate(texts):
            while True:  # rare docs of long words exceed one 200-token chunk: trim them to stay 1 chunk
                try:
                    writer.upsert(SourceDocument(id=f"d{i}", text=texts[i]), vectors=vectors[i:i + 1])
                    break
                except ValueError:
                    texts[i] = " ".join(texts[i].split()[:-10])
        writer.commit()
        chunks = writer.report.chunks_written
    return time.perf_counter() - started, chunks


def run_size(n: int, corpus: Corpus, n_queries: int, root: Path, ef_construction: int | None,
             rank_bm25_gib_per_doc: float | None) -> tuple[dict, float | None]:
    """Build, open and query one collection of n single-chunk documents; returns its result dict."""
    rng = np.random.default_rng(SEED + n)
    out: dict = {"size": n}
    texts = corpus.texts(rng, n, 40, 80)
    vectors = corpus.vectors(rng, n)
    synth = corpus.texts(rng, max(0, n_queries - len(corpus.real_queries)) + WARMUP, 3, 6)
    base = (corpus.real_queries + synth[WARMUP:])[:n_queries]
    suffix = corpus.words[rng.choice(len(corpus.words), size=(3, len(base) + WARMUP), p=corpus.p)]
    q_bm25 = base
    q_dense = [f"{q} {w}" for q, w in zip(base, suffix[0])]
    q_hybrid = [f"{q} {w}" for q, w in zip(base, suffix[1])]
    warm = [f"{q} {w}" for q, w in zip(synth[:WARMUP], suffix[2])]

    dense = DenseConfig() if ef_construction is None else DenseConfig(ef_construction=ef_construction)
    config = CollectionConfig(name=f"scale{n}", dense=dense)
    out["config"] = {"dense": dense.model_dump(), "bm25": config.bm25.model_dump(),
                     "fusion": config.fusion.model_dump()}
    build_s, chunks = build_synthetic(root, config, texts, vectors)
    out["build"] = {"seconds": round(build_s, 1), "chunks": chunks, "chunks_per_s": round(chunks / build_s, 1)}
    gc.collect()

    before = rss()
    collection: Collection = Home(root).open(config.name)  # fresh Home: segments loaded from disk
    snapshot = collection.snapshot()
    retriever = Retriever(collection)
    retriever.embed_query("warm up the embedder")
    for q in warm:  # numba JIT, faiss, tokenizer warm-up
        for mode in ("bm25", "dense", "hybrid"):
            retriever.search(RetrievalRequest(query=f"{q} {mode}", mode=mode, top_k=10))
    out["mighty_memory"] = {"rss_gib": gib(rss()), "rss_delta_open_gib": gib(rss() - before),
                            "disk_gib": gib(snapshot.size_on_disk()),
                            "segments": [(s.rows, s.dense.kind) for s in snapshot.segments]
                            if hasattr(snapshot.segments[0], "dense") else len(snapshot.segments)}

    lat: dict[str, list[float]] = {}
    results: dict[str, list[list[str]]] = {}
    inner: dict[str, list[float]] = {}
    for mode, queries in (("bm25", q_bm25), ("dense", q_dense), ("hybrid", q_hybrid)):
        lat[mode], results[mode] = [], []
        for q in queries:
            started = time.perf_counter()
            r = retriever.search(RetrievalRequest(query=q, mode=mode, top_k=10))
            lat[mode].append((time.perf_counter() - started) * 1000)
            results[mode].append(top10_ids(r.hits))
            if "embed" in r.timings_ms:
                inner.setdefault(f"{mode}_embed_ms", []).append(r.timings_ms["embed"])
    out["mighty_embed_inside_ms"] = {k: stats(v) for k, v in inner.items()}
    systems = {f"mighty {m}": stats(v) for m, v in lat.items()}
    del retriever, snapshot, collection
    gc.collect()

    # Query embedding alone, and the query vectors for exact search.
    embedder = Home(root).open(config.name).embedder
    emb_ms, qvecs = [], []
    for q in q_dense:
        started = time.perf_counter()
        qvecs.append(embedder.encode([q])[0])
        emb_ms.append((time.perf_counter() - started) * 1000)
    systems["query embedding"] = stats(emb_ms)
    qv = np.asarray(qvecs, dtype=np.float32)

    before = rss()
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    faiss_mem = rss() - before
    del vectors
    gc.collect()
    index.search(qv[:WARMUP], 10)
    f_ms, exact = [], []
    for v in qv:
        started = time.perf_counter()
        _, ids = index.search(v[None, :], 10)
        f_ms.append((time.perf_counter() - started) * 1000)
        exact.append([f"d{i}" for i in ids[0]])
    systems["faiss flat (no embed)"] = stats(f_ms) | {"rss_delta_gib": gib(faiss_mem)}
    out["dense_recall_at_10_vs_flat"] = overlap(results["dense"], exact)
    del index
    gc.collect()

    # rank-bm25 over Mighty's own analyzer tokens.
    rank_per_doc: float | None = None
    projected = None if rank_bm25_gib_per_doc is None else rank_bm25_gib_per_doc * n * 2**30
    if projected is not None and projected > RANK_BM25_RAM_LIMIT:
        systems["rank-bm25"] = {"skipped": f"projected RSS {gib(projected)} GiB > 12 GiB"}
    else:
        analyzer = Home(root).open(config.name).analyzer
        before = rss()
        started = time.perf_counter()
        tokenized = [analyzer.terms(t) for t in texts]
        del texts
        bm25 = BM25Okapi(tokenized, k1=1.2, b=0.75)
        rank_build = time.perf_counter() - started
        rank_mem = rss() - before
        rank_per_doc = rank_mem / n / 2**30
        n_rank = len(q_bm25) if n <= 200_000 else min(20, len(q_bm25))
        bm25.get_scores(analyzer.terms(warm[0]))
        r_ms, rank_ids = [], []
        for q in q_bm25[:n_rank]:
            started = time.perf_counter()
            scores = bm25.get_scores(analyzer.terms(q))
            top = np.argpartition(-scores, 10)[:10]
            top = top[np.argsort(-scores[top])]
            r_ms.append((time.perf_counter() - started) * 1000)
            rank_ids.append([f"d{i}" for i in top if scores[i] > 0])
        systems["rank-bm25"] = stats(r_ms) | {"rss_delta_gib": gib(rank_mem), "build_s": round(rank_build, 1)}
        out["bm25_overlap_at_10_vs_rank_bm25"] = overlap(results["bm25"][:n_rank], rank_ids)
        del bm25, tokenized
        gc.collect()
    for mode in ("bm25", "dense", "hybrid"):
        systems[f"mighty {mode}"]["rss_gib"] = out["mighty_memory"]["rss_delta_open_gib"]
    out["systems"] = systems
    return out, rank_per_doc


def print_table(results: list[dict]) -> None:
    rows = [(str(r["size"]), name, s) for r in results for name, s in r["systems"].items()]
    header = ["size", "system", "p50 ms", "p95 ms", "p99 ms", "QPS", "n", "mem GiB"]
    cells = [[size, name, *(str(s.get(k, "-")) for k in ("p50", "p95", "p99", "qps", "n")),
              str(s.get("rss_gib", s.get("rss_delta_gib", "-")))] if "skipped" not in s
             else [size, name, s["skipped"], "", "", "", "", ""] for size, name, s in rows]
    try:
        from rich.console import Console
        from rich.table import Table
        table = Table(title="Mighty scale benchmark (sequential, single client)")
        for h in header:
            table.add_column(h, justify="left" if h in ("size", "system") else "right")
        for c in cells:
            table.add_row(*c)
        Console(stderr=False, width=140).print(table)
    except ImportError:
        print("\t".join(header))
        for c in cells:
            print("\t".join(c))
    for r in results:
        print(f"size {r['size']}: build {r['build']}, memory {r['mighty_memory']}, "
              f"dense recall@10 vs flat {r.get('dense_recall_at_10_vs_flat')}, "
              f"bm25 overlap@10 vs rank-bm25 {r.get('bm25_overlap_at_10_vs_rank_bm25')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef-construction", type=int, default=None,
                        help="HNSW efConstruction for sizes >= 500k (default: the collection default)")
    parser.add_argument("--passages", type=int, default=1000,
                        help="real msmarco passages embedded as dense-vector centres (cached in benchmarks/results)")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    root = Path(tempfile.mkdtemp(prefix="mighty-scale-"))
    results: list[dict] = []
    try:
        probe = Home(root).create(CollectionConfig(name="vocab"))
        corpus = Corpus(probe.embedder, args.passages, Path(__file__).parent / "results")
        setup = {"passages_embedded": len(corpus.passage_vectors), "embed_s": round(corpus.embed_seconds, 1),
                 "vocabulary": len(corpus.words), "noise_sigma": NOISE_SIGMA, "seed": SEED,
                 "embedder": probe.config.embedder.model, "threads": os.cpu_count(),
                 "bm25_note": "Mighty uses lucene idf, k1=1.2; rank-bm25 BM25Okapi(k1=1.2,b=0.75) robertson idf "
                              "with epsilon floor -> overlap@10, not identity, is expected"}
        rank_per_doc: float | None = None
        for n in args.sizes:
            ef = args.ef_construction if n >= 500_000 else None
            result, per_doc = run_size(n, corpus, args.queries, root, ef, rank_per_doc)
            rank_per_doc = per_doc or rank_per_doc
            results.append(result)
            print_table(results)
            payload = {"setup": setup, "results": results}
            if args.json_out:
                args.json_out.parent.mkdir(parents=True, exist_ok=True)
                args.json_out.write_text(json.dumps(payload, indent=2))
            shutil.rmtree(root / "collections" / f"scale{n}", ignore_errors=True)
        print(json.dumps({"setup": setup, "results": results}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
