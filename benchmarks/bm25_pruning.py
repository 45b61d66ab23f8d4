"""BM25 top-k with MaxScore pruning against exhaustive scoring, on a built synthetic collection.

Usage: python benchmarks/bm25_pruning.py [--size 1000000] [--cache /work/bench-cache/scale12] [--queries 200] [--k 100]
Reuses the collection `benchmarks/synthetic.py --size N --build-only` built (same timed query
strings), runs each query through both kernels on every segment, checks they return the same
scores, and prints p50 / p95 / p99 ms of each (the candidates a hybrid query takes: k = 100).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.scale import stats  # noqa: E402
from benchmarks.synthetic import SyntheticCorpus, home_for, queries  # noqa: E402
from indexes.sparse_top_k import exhaustive_top_k  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--cache", type=Path, default=Path("/work/bench-cache/scale12"))
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=100)
    args = parser.parse_args()
    home, name = home_for(args.cache, args.size)
    collection = home.open(name)
    snapshot, config = collection.snapshot(), collection.config.bm25
    warm, timed = queries(SyntheticCorpus(args.cache, collection), args.size, args.queries)
    stats_ = snapshot.bm25_stats(config)
    parsed = [snapshot.bm25_query(collection.analyzer, config, q) for q in warm + timed]
    for terms, weights in parsed[:len(warm)]:
        snapshot.bm25_top_k(config, terms, weights, args.k)
    pruned, exhaustive, postings, mismatches = [], [], [], 0
    for terms, weights in parsed[len(warm):]:
        started = time.perf_counter()
        hits = snapshot.bm25_top_k(config, terms, weights, args.k)
        pruned.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        reference = []
        for segment in snapshot.segments:
            sparse = segment.sparse
            keep = [i for i, t in enumerate(terms) if t in sparse.term_ids]
            ids = np.asarray([sparse.term_ids[terms[i]] for i in keep], dtype=np.int64)
            _, scores = exhaustive_top_k(sparse.indptr, sparse.indices, sparse.tf, sparse.doc_len,
                                         np.zeros(0, np.uint8), ids, np.asarray(weights, float)[keep],
                                         config.k1, config.b, stats_.avgdl, args.k)
            reference.extend(scores.tolist())
            postings.append(int(sum(sparse.indptr[t + 1] - sparse.indptr[t] for t in ids)))
        exhaustive.append((time.perf_counter() - started) * 1000)
        best = sorted(reference, reverse=True)[:args.k]
        mismatches += not np.allclose([h.score for h in hits], best, rtol=1e-9)
    result = {"benchmark": "bm25_pruning", "size": args.size, "k": args.k, "queries": len(timed),
              "pruned_ms": stats(pruned), "exhaustive_ms": stats(exhaustive),
              "postings_per_query": {"p50": int(np.median(postings)), "max": int(max(postings))},
              "score_mismatches": mismatches}
    print(f"{args.size:,} chunks, k={args.k}, {len(timed)} queries, postings per query p50 "
          f"{result['postings_per_query']['p50']:,} (max {result['postings_per_query']['max']:,}); "
          f"mismatching queries: {mismatches}")
    for label in ("exhaustive_ms", "pruned_ms"):
        s = result[label]
        print(f"  {label[:-3]:<11} p50 {s['p50']:6.2f}  p95 {s['p95']:6.2f}  p99 {s['p99']:6.2f} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
