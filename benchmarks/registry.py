"""What the card registry costs: validation phases, register, activate/rollback and reads.

Run from the repository root: `python benchmarks/registry.py` (see --help). `--postgres` adds a run on
a throwaway PostgreSQL server (the tests' helper: initdb/pg_ctl must be installed), or pass
`--postgres-url` for an existing one.

- static ms: `check_static` on a card folder (a tiny LoRA on smollm2-135m-instruct): scan, manifest,
  paths, safetensors headers.
- load s: the load phase, uncached: base + adapter load, vocabulary checks, a forward pass and four
  generated tokens. Registering repeats it only for content not verified in this process.
- register ms: a whole register of a new version whose weights were verified already (copy into the
  store, static checks, one transaction, atomic rename).
- activate / rollback / get / list ms: medians over --repeats calls, with --versions versions stored.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from api.db import open_database  # noqa: E402
from experts.registry import Actor, CardRegistry  # noqa: E402
from experts.validation import check_loads, check_static  # noqa: E402
from tests.cards_helpers import make_tiny_adapter, write_card  # noqa: E402

ADMIN = Actor("bench", None, True)


def median_ms(work, repeats: int) -> float:
    timings = []
    for index in range(repeats):
        started = time.perf_counter()
        work(index)
        timings.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(timings), 2)


def run(backend: str, url: str, adapter: Path, scratch: Path, versions: int, repeats: int) -> dict:
    engine = open_database(url)
    registry = CardRegistry(engine, scratch / f"cards-{backend}")
    folders = [write_card(scratch / f"{backend}-{i}", adapter, name="bench", version=f"1.0.{i}")
               for i in range(versions)]
    static_ms = median_ms(lambda _: check_static(folders[0]), repeats)
    started = time.perf_counter()
    check_loads(folders[0], check_static(folders[0]).manifest)
    load_s = round(time.perf_counter() - started, 2)
    registry.register(folders[0], ADMIN)  # verifies the content once for this process
    register_ms = median_ms(lambda i: registry.register(folders[i + 1], ADMIN), versions - 1)
    activate_ms = median_ms(lambda i: registry.activate("bench", f"1.0.{i % versions}", ADMIN), repeats)
    rollback_ms = median_ms(lambda _: registry.rollback("bench", ADMIN), min(repeats, 5))
    get_ms = median_ms(lambda _: registry.get("bench"), repeats)
    list_ms = median_ms(lambda _: registry.list(include_inactive=True), repeats)
    engine.dispose()
    return {"backend": backend, "versions": versions, "static_ms": static_ms, "load_s": load_s,
            "register_ms": register_ms, "activate_ms": activate_ms, "rollback_ms": rollback_ms,
            "get_ms": get_ms, "list_all_ms": list_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", type=int, default=30, help="versions registered per backend")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--postgres", action="store_true", help="also run on a throwaway PostgreSQL server")
    parser.add_argument("--postgres-url", help="also run on this PostgreSQL server (needs CREATE DATABASE)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: a shared CPU stalls multi-threaded OpenMP on tiny batches)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="mighty-bench-registry-"))
    print("making a tiny LoRA adapter ...", file=sys.stderr)
    adapter = make_tiny_adapter(scratch / "adapter")
    rows = [run("sqlite", f"sqlite:///{scratch / 'registry.db'}", adapter, scratch, args.versions, args.repeats)]
    if args.postgres or args.postgres_url:
        from tests.postgres import PostgresServer

        server = PostgresServer(args.postgres_url)
        try:
            rows.append(run("postgresql", server.new_database(), adapter, scratch, args.versions, args.repeats))
        finally:
            server.stop()
    columns = ["backend", "versions", "static_ms", "load_s", "register_ms", "activate_ms", "rollback_ms",
               "get_ms", "list_all_ms"]
    print("".join(f"{c:>13}" for c in columns))
    for row in rows:
        print("".join(f"{row[c]:>13}" for c in columns))
    print(json.dumps({"registry": rows, "threads": args.threads, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
