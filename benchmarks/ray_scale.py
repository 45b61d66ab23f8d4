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
from indexes.documents import SourceDocument  # noqa: E402

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
                while True:  # a rare document of long words exceeds one chunk: trim it to stay one chunk
                    try:
                        writer.upsert(SourceDocument(id=f"d{i}", text=text), vectors=vectors[i:i + 1])
                        break
                    except ValueError:
                        text = " ".join(text.split()[:-10])
            writer.commit()
        print(f"{name}: {args.size} chunks in {time.perf_counter() - started:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["build", "latency", "ingest"])
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--centres", type=int, default=300, help="real passages embedded as vector centres")
    args = parser.parse_args()
    {"build": build}[args.what](args)


if __name__ == "__main__":
    main()
