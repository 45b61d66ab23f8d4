"""Train a card on pg-essays with the default settings (per base); held-out perplexity of base vs card, time, tokens/s.

Run from the repository root: `python benchmarks/card_training.py` (see --help).

The corpus (2,043 chunks of 207 Paul Graham essays) is grouped back into essays by title and 10% of
the essays are held out (seeded); the card trains on the rest through the same code path as
`mighty cards train` (experts.training.run.train_card) with its defaults. The base and the card are
scored on the same held-out tokens. Target: the card cuts held-out perplexity by at least 20%.
Prints a table and one JSON object, and writes the JSON under benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `mighty` does: spinning threads stall on a shared CPU
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from experts.training.run import TrainRequest, train_card  # noqa: E402
from experts.training.settings import TrainSettings  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "pg-essays" / "corpus.jsonl"
RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 0.20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(CORPUS))
    parser.add_argument("--out", type=Path, default=None,
                        help="card folder to keep (default: a temporary folder, removed afterwards)")
    parser.add_argument("--name", default="pg-essays-card")
    parser.add_argument("--kind", default="both", choices=["knowledge", "fusion", "both"])
    parser.add_argument("--base", default=None, help="card base (default: the documented default, "
                                                     "qwen2.5-coder-0.5b-instruct, with its per-base settings)")
    parser.add_argument("--steps", type=int, default=None, help="override the default steps (for quick looks)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core, as mighty)")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished card in --out")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = TrainSettings(**{key: value for key, value in (("steps", args.steps), ("base", args.base)) if value})
    with tempfile.TemporaryDirectory(prefix="mighty-card-bench-") as scratch:
        out = args.out or Path(scratch) / args.name
        request = TrainRequest(corpus=args.corpus, name=args.name, out=out, settings=settings, kind=args.kind,
                               owner="benchmarks", domain="essays on startups, programming and ideas",
                               overwrite=args.overwrite)
        began = time.perf_counter()
        report = train_card(request, Console(stderr=True))
        wall = time.perf_counter() - began
    reduction = report.ppl_reduction or 0.0
    row = {"heldout_ppl_base": round(report.heldout_ppl_base, 3), "heldout_ppl_card": round(report.heldout_ppl_card or 0, 3),
           "reduction_pct": round(100 * reduction, 2), "target_met": reduction >= TARGET,
           "train_seconds": round(report.train_seconds, 1), "train_tokens": report.train_tokens,
           "train_tokens_per_s": round(report.train_tokens_per_s, 1), "total_seconds": round(wall, 1),
           "heldout_documents": report.heldout_documents, "heldout_tokens": report.heldout_tokens,
           "train_documents": report.train_documents, "steps": report.steps,
           "card_dir": str(args.out) if args.out else None, "settings": settings.model_dump(mode="json"),
           "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
           "load_average_1m": round(os.getloadavg()[0], 2)}
    table = Table("pg-essays card (defaults)", "value")
    for label, value in [("held-out perplexity, base", f"{row['heldout_ppl_base']:.2f}"),
                         ("held-out perplexity, card", f"{row['heldout_ppl_card']:.2f}"),
                         ("reduction (target >= 20%)", f"{row['reduction_pct']:.1f}%"),
                         ("training", f"{row['steps']} steps, {row['train_tokens']} tokens, "
                                      f"{row['train_seconds']:.0f} s, {row['train_tokens_per_s']:.1f} tokens/s"),
                         ("whole run", f"{row['total_seconds']:.0f} s (load, score base, train, score card, write)"),
                         ("held-out", f"{row['heldout_documents']} of {row['heldout_documents'] + row['train_documents']}"
                                      f" essays, {row['heldout_tokens']} tokens scored"),
                         ("cpu", f"{row['threads']} threads, load average {row['load_average_1m']}")]:
        table.add_row(label, value)
    Console().print(table)
    print(json.dumps(row))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"card_training-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
