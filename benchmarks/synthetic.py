"""Synthetic corpus at any size (100k, 1M, ...) whose vectors are not near-duplicates: build once, query many.

Why not the old scale set: it was ~1,000 noisy copies of 1,000 passages, so a query's exact top 10
were near-ties inside one cluster and recall@10 measured tie-breaking, not search quality.

What this set is (seeded, so every run of a size is the same corpus):
- **Vectors**: each document mixes three *different* real MS MARCO passage embeddings (the
  dictionary: all 5,000 passages of the shared subset, embedded once with the collection's
  embedder and cached) with Dirichlet(1,1,1) weights, plus isotropic noise of norm ~0.15, then
  is normalised. Points fill the span of the real embedding manifold continuously (C(5000, 3)
  combinations, continuous weights), so neighbours are at graded, distinct distances (the script
  prints the exact top-1 / top-10 cosine gap as evidence), and real query embeddings land among them.
- **Text**: 40-80 words drawn from the MS MARCO unigram distribution (Zipfian), so BM25 postings
  have realistic lengths (common words cover most rows, rare ones a handful).
- **Queries**: the 50 real MS MARCO queries, then synthetic 3-6 word strings; every string is
  distinct, so the query-vector cache never hits and each timed search includes the real embedding.

Building goes through Mighty's own writer with precomputed vectors (no passage embedding), flushed
once so the HNSW graph is built a single time, into a persistent home under --cache; a later run
with the same size reuses it. `--ray`-style users (issue 13) can import `build` / `measure`.

    nice -n 19 python benchmarks/synthetic.py --size 1000000 --cache /work/bench-cache/scale12 \
        [--build-only] [--queries 200] [--ef-search 64 128 256] [--json-out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import indexes.writer as writer_module  # noqa: E402
from benchmarks.scale import read_jsonl, stats  # noqa: E402  (one home for the latency summary)
from indexes.collection import Collection, Home  # noqa: E402
from indexes.config import CollectionConfig  # noqa: E402
from indexes.documents import SourceDocument  # noqa: E402

MSMARCO = Path("/work/shared/benchmarks/msmarco")
SEED = 20261201
MIX = 3
NOISE_NORM = 0.15
WARMUP = 20
PART = 50_000


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class SyntheticCorpus:
    """The vocabulary, the dictionary of real passage vectors, and seeded generators of documents."""

    def __init__(self, cache: Path, collection: Collection) -> None:
        passages = read_jsonl(MSMARCO / "corpus.jsonl")
        counts = Counter(w for p in passages for w in p["text"].lower().split())
        self.words = list(counts)
        freq = np.fromiter(counts.values(), dtype=np.float64)
        self.p = freq / freq.sum()
        self.real_queries = [q["text"] for q in read_jsonl(MSMARCO / "queries.jsonl")]
        path = cache / "dictionary.npy"
        if path.exists():
            self.dictionary = np.load(path, allow_pickle=False)
        else:
            log(f"embedding the dictionary: {len(passages)} MS MARCO passages")
            texts = [f"{p.get('title') or ''}\n{p['text']}".strip() for p in passages]
            self.dictionary = collection.embedder.encode(texts).astype(np.float32)
            np.save(path, self.dictionary, allow_pickle=False)

    def texts(self, rng: np.random.Generator, n: int, low: int, high: int) -> list[str]:
        lengths = rng.integers(low, high + 1, n)
        ids = rng.choice(len(self.words), size=int(lengths.sum()), p=self.p).astype(np.int32).tolist()
        bounds = np.concatenate([[0], np.cumsum(lengths)]).tolist()
        words = self.words
        return [" ".join([words[j] for j in ids[bounds[i]:bounds[i + 1]]]) for i in range(n)]

    def vectors(self, rng: np.random.Generator, n: int) -> np.ndarray:
        size, dim = self.dictionary.shape
        picks = np.stack([rng.choice(size, MIX, replace=False) for _ in range(n)])
        weights = rng.dirichlet(np.ones(MIX), n).astype(np.float32)
        v = np.einsum("nk,nkd->nd", weights, self.dictionary[picks])
        v += rng.normal(0, NOISE_NORM / np.sqrt(dim), v.shape).astype(np.float32)
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def upsert_one_chunk(writer, doc_id: str, text: str, vector: np.ndarray) -> None:
    """Upsert a synthetic document with its precomputed vector; a rare run of long words makes it
    span two chunks (one vector cannot serve both), so it is trimmed until it fits one."""
    while True:
        try:
            writer.upsert(SourceDocument(id=doc_id, text=text), vectors=vector)
            return
        except ValueError:
            text = " ".join(text.split()[:-10])


def home_for(cache: Path, size: int) -> tuple[Home, str]:
    return Home(cache / "home"), f"synthetic-{size}"


def build(cache: Path, size: int, config: CollectionConfig | None = None) -> dict:
    """Build (or reuse) the collection of `size` single-chunk documents; returns build figures."""
    home, name = home_for(cache, size)
    if name in home.names():
        collection = home.open(name)
        if collection.snapshot().manifest.chunks == size:
            log(f"reusing {name}")
            return json.loads((cache / f"build-{size}.json").read_text()) if (cache / f"build-{size}.json").exists() else {}
        home.delete(name)
    config = config or CollectionConfig(name=name)
    collection = home.create(config)
    corpus = SyntheticCorpus(cache, collection)
    rng = np.random.default_rng(SEED + size)
    vectors = np.lib.format.open_memmap(cache / f"vectors-{size}.npy", mode="w+", dtype=np.float32,
                                        shape=(size, corpus.dictionary.shape[1]))
    writer_module.FLUSH_CHUNKS = size + 1  # one flush: the HNSW graph is built once, not per 100k + merge
    started = time.perf_counter()
    with collection.writer() as writer:
        for start in range(0, size, PART):
            n = min(PART, size - start)
            texts, vecs = corpus.texts(rng, n, 40, 80), corpus.vectors(rng, n)
            vectors[start:start + n] = vecs
            for i, text in enumerate(texts):
                upsert_one_chunk(writer, f"d{start + i}", text, vecs[i:i + 1])
            log(f"upserted {start + n:,}/{size:,} ({(start + n) / (time.perf_counter() - started):.0f} docs/s)")
        log("flushing: building the HNSW graph and the BM25 segment, then calibrating")
        writer.commit()
    vectors.flush()
    seconds = time.perf_counter() - started
    snapshot = home.open(name).snapshot()
    figures = {"size": size, "build_s": round(seconds, 1), "chunks_per_s": round(size / seconds, 1),
               "disk_gib": round(snapshot.size_on_disk() / 2**30, 3),
               "dense": config.dense.model_dump(), "segments": [(s.rows, s.dense.kind) for s in snapshot.segments],
               "fusion": snapshot.manifest.fusion and {k: snapshot.manifest.fusion[k] for k in
                                                       ("dense_weight", "normalisation") if k in snapshot.manifest.fusion}}
    (cache / f"build-{size}.json").write_text(json.dumps(figures))
    log(f"built {name}: {figures}")
    return figures


def queries(corpus: SyntheticCorpus, size: int, n: int) -> tuple[list[str], list[str]]:
    """(warm-up strings, timed strings), all distinct."""
    rng = np.random.default_rng(SEED - size)
    synth = corpus.texts(rng, n + WARMUP, 3, 6)
    timed = list(dict.fromkeys(corpus.real_queries + synth[WARMUP:]))[:n]
    return synth[:WARMUP], timed


def measure(cache: Path, size: int, n_queries: int, ef_values: list[int], threads: int) -> dict:
    """Latency of bm25/dense/hybrid (hybrid and dense include the query embedding), the embedding alone,
    and dense recall@10 against exact search, for each efSearch."""
    import faiss

    from rag.retriever import Retriever
    from rag.schemas import RetrievalRequest

    faiss.omp_set_num_threads(threads)
    home, name = home_for(cache, size)
    collection = home.open(name)
    corpus = SyntheticCorpus(cache, collection)
    warm, timed = queries(corpus, size, n_queries)
    exact_vectors = np.load(cache / f"vectors-{size}.npy", mmap_mode="r")
    embedder = collection.embedder
    qvecs = embedder.encode(timed)
    truth, top1, top10 = [], [], []
    for start in range(0, len(qvecs), 50):
        scores = np.asarray(exact_vectors @ qvecs[start:start + 50].T).T  # (q, n)
        for row in scores:
            top = np.argpartition(-row, 10)[:10]
            top = top[np.argsort(-row[top])]
            truth.append({f"d{i}" for i in top})
            top1.append(float(row[top[0]]))
            top10.append(float(row[top[9]]))
    out: dict = {"size": size, "queries": len(timed), "threads": threads,
                 "exact_top1_cos_mean": round(float(np.mean(top1)), 4),
                 "exact_top1_minus_top10_cos_mean": round(float(np.mean(np.subtract(top1, top10))), 4)}
    emb = []
    for q in warm:
        embedder.encode([q + " warm"])
    for q in timed:
        started = time.perf_counter()
        embedder.encode([q + " alone"])
        emb.append((time.perf_counter() - started) * 1000)
    out["query embedding alone"] = stats(emb)
    runs = {}
    for ef in ef_values:
        config = collection.config.model_copy(update={"dense": collection.config.dense.model_copy(
            update={"ef_search": ef})})
        collection.config = config
        retriever = Retriever(collection)
        for q in warm:
            for mode in ("bm25", "dense", "hybrid"):
                retriever.search(RetrievalRequest(query=f"{q} {mode} {ef}", mode=mode, top_k=10))
        row: dict = {}
        for mode, suffix in (("bm25", ""), ("dense", ""), ("hybrid", " the")):
            if mode == "bm25" and ef != ef_values[0]:
                continue
            lat, recall, parts = [], [], {}
            for q in timed:  # hybrid adds a stopword: a string dense has not embedded (no cache hit)
                started = time.perf_counter()
                r = retriever.search(RetrievalRequest(query=q + suffix, mode=mode, top_k=10))
                lat.append((time.perf_counter() - started) * 1000)
                for part, ms in r.timings_ms.items():
                    parts.setdefault(part, []).append(ms)
                if mode == "dense":
                    recall.append(len({h.id for h in r.hits} & truth[len(recall)]) / 10)
            row[mode] = stats(lat) | {"parts_p50": {k: round(float(np.median(v)), 2) for k, v in parts.items()}}
            if recall:
                real = len(set(corpus.real_queries) & set(timed))  # the real queries come first
                row["dense_recall_at_10"] = round(float(np.mean(recall)), 4)
                row["dense_recall_at_10_by_kind"] = {kind: round(float(np.mean(part)), 4) if part else None
                                                     for kind, part in (("real", recall[:real]),
                                                                        ("synthetic", recall[real:]))}
        runs[str(ef)] = row
        log(f"efSearch {ef}: {row}")
    out["by_ef_search"] = runs
    return out


def print_table(result: dict) -> None:
    print(f"\n{result['size']:,} chunks, {result['threads']} threads, {result['queries']} queries; exact top-1 cos "
          f"{result['exact_top1_cos_mean']}, top-1 minus top-10 {result['exact_top1_minus_top10_cos_mean']}")
    e = result["query embedding alone"]
    print(f"{'efSearch':>8s} {'mode':8s} {'p50 ms':>7s} {'p95 ms':>7s} {'p99 ms':>7s} recall@10")
    print(f"{'-':>8s} {'embed':8s} {e['p50']:7.2f} {e['p95']:7.2f} {e['p99']:7.2f}")
    for ef, row in result["by_ef_search"].items():
        for mode in ("bm25", "dense", "hybrid"):
            if mode in row:
                s = row[mode]
                rec = row.get("dense_recall_at_10", "") if mode == "dense" else ""
                if rec != "":
                    kinds = row["dense_recall_at_10_by_kind"]
                    rec = f"{rec} (real {kinds['real']}, synthetic {kinds['synthetic']})"
                print(f"{ef:>8s} {mode:8s} {s['p50']:7.2f} {s['p95']:7.2f} {s['p99']:7.2f} {rec}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--cache", type=Path, default=Path("/work/bench-cache/scale12"))
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    figures = build(args.cache, args.size)
    if args.build_only:
        print(json.dumps({"benchmark": "synthetic", "build": figures}))
        return
    result = measure(args.cache, args.size, args.queries, args.ef_search, args.threads) | {"build": figures}
    print_table(result)
    line = json.dumps({"benchmark": "synthetic", **result})
    if args.json_out:
        args.json_out.write_text(line)
    print(line)


if __name__ == "__main__":
    main()
