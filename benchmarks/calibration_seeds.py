"""Default hybrid quality per calibration seed: how much the label-free fusion calibration moves with
the sample it is measured on.

Usage: python benchmarks/calibration_seeds.py [--only NAME ...] [--seeds 0 1 2 3 4] [--home PATH]
                                              [--backend torch|onnx|onnx-int8] [--embedder MODEL]
                                              [--samples N]
Each set (`benchmarks/quality_sets.py`, as `benchmarks/quality.py` scores them) is indexed once
(cached under --home like quality.py's), then for every seed the collection's fusion is measured
again with `fusion.calibration_seed` set to it (what `mighty index calibrate` does, so nothing is
re-embedded) and the default hybrid is scored through `rag.evaluation`. BM25 and dense do not depend
on the calibration and are scored once. Prints one line per set and seed (both nDCG@10 variants,
hybrid's margin over the better single retriever, the calibrated settings and the probes per style),
then one JSON line. The index is left calibrated with the last seed. --samples above a collection's
chunk count adds nothing with the pseudo-query sampler as it is (one pseudo-query per chunk); see
benchmarks/RESULTS.md, "More pseudo-queries per chunk on small collections", for when it did.
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

from benchmarks.quality_sets import ROOT, available  # noqa: E402
from indexes.collection import Home  # noqa: E402
from indexes.config import CollectionConfig, EmbedderConfig  # noqa: E402
from rag.evaluation import BeirDataset, build_index, evaluate  # noqa: E402

METRICS = ("ndcg@10_lb", "ndcg@10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=["docs-qa", "arabic-qa"])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--docs-qa", type=Path, default=ROOT / "data" / "qa" / "docs-qa.jsonl")
    parser.add_argument("--home", type=Path,
                        default=Path(os.environ.get("MIGHTY_HOME", "~/.mighty")).expanduser() / "eval-cache")
    parser.add_argument("--backend", default="onnx", choices=["torch", "onnx", "onnx-int8"])
    parser.add_argument("--embedder", default=None)
    parser.add_argument("--samples", type=int, default=None, help="fusion.calibration_samples (default: the config's)")
    args = parser.parse_args()
    home = Home(args.home)
    embedder = {"backend": args.backend} | ({"model": args.embedder} if args.embedder else {})
    config = CollectionConfig(name="eval", embedder=EmbedderConfig(**embedder))
    rows = []
    with tempfile.TemporaryDirectory(prefix="mighty-seeds-") as scratch:
        for folder in available(Path(scratch), [], args.only, args.docs_qa):
            dataset = BeirDataset.load(folder)
            collection, rate = build_index(home, dataset, config)
            single = {mode: evaluate(collection, dataset, mode, rate) for mode in ("bm25", "dense")}
            for seed in args.seeds:
                rows.append(_one_seed(folder.name, collection, dataset, rate, single, seed, args.samples))
                print(_line(rows[-1]), flush=True)
    print(json.dumps({"backend": args.backend, "embedder": config.embedder.model, "rows": rows}))


def _one_seed(name: str, collection, dataset: BeirDataset, rate: float, single: dict, seed: int,
              samples: int | None) -> dict:
    wanted = samples or collection.config.fusion.calibration_samples
    fusion = collection.config.fusion.model_copy(update={"calibration_seed": seed, "calibration_samples": wanted})
    collection.config = collection.config.model_copy(update={"fusion": fusion})
    started, load = time.perf_counter(), os.getloadavg()[0]
    with collection.writer() as writer:
        writer.recalibrate()
    seconds = time.perf_counter() - started
    hybrid = evaluate(collection, dataset, "hybrid", rate)
    found = {"bm25": single["bm25"], "dense": single["dense"], "hybrid": hybrid}
    margin = {m: round(hybrid[m] - max(single["bm25"][m], single["dense"][m]), 4) for m in METRICS}
    stored = collection.stats()["fusion"]
    return {"set": name, "seed": seed, **{run: {m: round(found[run][m], 4) for m in METRICS} for run in found},
            "margin": margin, "calibration_s": round(seconds, 1), "load": round(load, 1),
            "fusion": {k: stored.get(k) for k in ("dense_weight", "keyword_weight", "dense_weight_max",
                                                   "normalisation", "probes")}}


def _line(row: dict) -> str:
    cells = " ".join(f"{run} {row[run]['ndcg@10_lb']:.4f}/{row[run]['ndcg@10']:.4f}"
                     for run in ("bm25", "dense", "hybrid"))
    fusion = row["fusion"]
    return (f"{row['set']:<10} seed {row['seed']}  {cells}  margin {row['margin']['ndcg@10_lb']:+.4f}/"
            f"{row['margin']['ndcg@10']:+.4f}  dense {fusion['dense_weight']} kw {fusion['keyword_weight']} "
            f"max {fusion['dense_weight_max']} {fusion['normalisation']} probes {fusion['probes']} "
            f"calibration {row['calibration_s']} s (load {row['load']})")


if __name__ == "__main__":
    main()
