"""Retrieval quality on BEIR folders: bm25, dense and hybrid (convex and RRF) side by side.

Usage: python benchmarks/quality.py [BEIR_DIR ...] [--home PATH] [--backend torch|onnx|onnx-int8]
Defaults to ../shared/benchmarks/msmarco. Indexes are cached under --home by content and settings.
Prints a table, then one JSON line with every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexes.collection import Home  # noqa: E402
from indexes.config import CollectionConfig, EmbedderConfig  # noqa: E402
from rag.evaluation import BeirDataset, build_index, evaluate  # noqa: E402

RUNS = [("bm25", {}), ("dense", {}), ("hybrid", {}), ("hybrid", {"fusion": "rrf"})]
COLUMNS = ["ndcg@10", "ndcg@10_lb", "recall@10", "recall@100", "mrr@10", "p50_ms", "p95_ms", "index_passages_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", type=Path,
                        default=[Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "msmarco"])
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("MIGHTY_HOME", "~/.mighty")).expanduser() / "eval-cache")
    parser.add_argument("--backend", default="onnx", choices=["torch", "onnx", "onnx-int8"])
    args = parser.parse_args()
    home = Home(args.home)
    config = CollectionConfig(name="eval", embedder=EmbedderConfig(backend=args.backend))
    rows = []
    for folder in args.datasets:
        dataset = BeirDataset.load(folder)
        collection, rate = build_index(home, dataset, config)
        for mode, options in RUNS:
            report = evaluate(collection, dataset, mode, rate, **options)
            report["run"] = mode + (f"-{options['fusion']}" if options else "")
            report["backend"] = args.backend
            rows.append(report)
    print(f"{'dataset':<12}{'run':<12}" + "".join(f"{c:>13}" for c in COLUMNS))
    for row in rows:
        print(f"{row['dataset']:<12}{row['run']:<12}" + "".join(f"{row[c]:>13}" for c in COLUMNS))
    print(json.dumps({"quality": rows}))


if __name__ == "__main__":
    main()
