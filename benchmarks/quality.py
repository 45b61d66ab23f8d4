"""Retrieval quality on every BEIR set available: bm25, dense, hybrid (the default) and RRF.

Usage: python benchmarks/quality.py [BEIR_DIR ...] [--only NAME ...] [--docs-qa FILE] [--home PATH]
                                    [--backend torch|onnx|onnx-int8] [--embedder MODEL]
Scores the sets `benchmarks/quality_sets.py` builds (MS MARCO, pg-essays known-item, docs-qa,
Arabic) plus any BEIR folders given, through the same `rag.evaluation` code as `mighty eval
retrieval`, so a hidden set scored with that command behaves the same. Indexes are cached under
--home by content and settings. Prints a table (both nDCG@10 variants, the fusion weights each
collection calibrated, and hybrid's margin over the better single retriever), then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.quality_sets import ROOT, available  # noqa: E402
from indexes.collection import Home  # noqa: E402
from indexes.config import CollectionConfig, EmbedderConfig  # noqa: E402
from rag.evaluation import BeirDataset, build_index, evaluate  # noqa: E402

RUNS = [("bm25", {}), ("dense", {}), ("hybrid", {}), ("hybrid", {"fusion": "rrf"})]
METRICS = ["ndcg@10_lb", "ndcg@10"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", type=Path, help="extra BEIR folders")
    parser.add_argument("--only", nargs="*", default=None, help="msmarco, pg-essays, pg-essays-popular, pg-questions, docs-qa, arabic-qa")
    parser.add_argument("--docs-qa", type=Path, default=ROOT / "data" / "qa" / "docs-qa.jsonl",
                        help="questions for the docs-qa set")
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("MIGHTY_HOME", "~/.mighty")).expanduser() / "eval-cache")
    parser.add_argument("--backend", default="onnx", choices=["torch", "onnx", "onnx-int8"])
    parser.add_argument("--embedder", default=None, help="embedder model (default: the collection default)")
    args = parser.parse_args()
    home = Home(args.home)
    embedder = {"backend": args.backend} | ({"model": args.embedder} if args.embedder else {})
    config = CollectionConfig(name="eval", embedder=EmbedderConfig(**embedder))
    rows, summary = [], []
    with tempfile.TemporaryDirectory(prefix="mighty-quality-") as scratch:
        folders = available(Path(scratch), args.datasets, args.only, args.docs_qa)
        for folder in folders:
            dataset = BeirDataset.load(folder)
            collection, rate = build_index(home, dataset, config)
            found = {}
            for mode, options in RUNS:
                report = evaluate(collection, dataset, mode, rate, **options)
                report["run"] = mode + (f"-{options['fusion']}" if options else "")
                report["embedder"] = config.embedder.model
                found[report["run"]] = report
                rows.append(report)
            summary.append(_summary(folder.name, found, collection.stats()["fusion"]))
    print(f"{'set':<12}" + "".join(f"{run:>16}" for run, _ in _run_names()) + f"{'margin':>16}  fusion")
    for item in summary:
        cells = "".join(f"{item['lb'][r]:>7.3f} / {item['std'][r]:.3f}" for r, _ in _run_names())
        print(f"{item['set']:<12}{cells}{item['margin']['lb']:>+8.3f} / {item['margin']['std']:+.3f}  {item['fusion_text']}")
    print("(each cell: ndcg@10_lb / ndcg@10; margin: hybrid minus the better of bm25 and dense)")
    print(json.dumps({"quality": rows, "summary": summary}))


def _run_names() -> list[tuple[str, str]]:
    return [("bm25", "bm25"), ("dense", "dense"), ("hybrid", "hybrid"), ("hybrid-rrf", "rrf")]


def _summary(name: str, found: dict[str, dict], fusion: dict) -> dict:
    lb = {run: found[run]["ndcg@10_lb"] for run, _ in _run_names()}
    std = {run: found[run]["ndcg@10"] for run, _ in _run_names()}
    margin = {"lb": round(lb["hybrid"] - max(lb["bm25"], lb["dense"]), 4),
              "std": round(std["hybrid"] - max(std["bm25"], std["dense"]), 4)}
    keywords = f" (keyword bags {fusion['keyword_weight']})" if fusion.get("keyword_weight") is not None else ""
    if fusion.get("dense_weight_max") is not None and fusion["dense_weight_max"] > fusion["dense_weight"]:
        keywords += f" (closely matched up to {fusion['dense_weight_max']})"
    if fusion.get("dominated_top") is not None:
        keywords += f" (dense wins nothing: only beyond {fusion['dominated_top']:.3f})"
    text = (f"{fusion['source']}: dense {fusion['dense_weight']}{keywords}, {fusion['normalisation']}, "
            f"adaptive {fusion['adaptive']}")
    return {"set": name, "queries": found["bm25"]["queries"], "lb": lb, "std": std, "margin": margin,
            "fusion": fusion, "fusion_text": text}


if __name__ == "__main__":
    main()
