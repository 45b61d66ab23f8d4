"""A quick pg-essays fusion card for the fusion benchmark, when no trained card is at hand.

`mighty cards train --kind fusion` (the expert-cards work) makes the real one; this short LoRA run
exists so that `benchmarks/fusion.py` can run anywhere. It holds out 10% of the essays (by title,
seeded), trains on the rest and records the held-out titles in the manifest like a real card.

    python benchmarks/fusion_quick_card.py OUT_FOLDER [--steps 80]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CORPUS = REPO.parent / "shared" / "corpora" / "pg-essays" / "corpus.jsonl"
BASE = "smollm2-135m-instruct"


def heldout_titles(titles: list[str], fraction: float, seed: int) -> list[str]:
    ranked = sorted(set(titles), key=lambda t: hashlib.sha256(f"{seed}\x00{t}".encode()).hexdigest())
    return sorted(ranked[:max(1, round(fraction * len(ranked)))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from peft import LoraConfig, get_peft_model
    from rich.progress import Progress

    from experts.fusion.corpus import document_key, file_sha256, join_chunks, read_jsonl
    from experts.manifest import CardManifest, dump_manifest
    from experts.models import load_base

    records = read_jsonl(args.corpus)
    texts: dict[str, list[str]] = {}
    for number, record in enumerate(records, 1):
        texts.setdefault(document_key(record, number), []).append(record["text"])
    heldout = heldout_titles(list(texts), 0.1, seed=0)
    loaded = load_base(BASE, fresh=True)
    tokenizer = loaded.tokenizer
    windows = []
    for title, parts in texts.items():
        if title in heldout:
            continue
        ids = tokenizer(join_chunks(parts))["input_ids"]
        windows += [ids[i:i + args.length] for i in range(0, len(ids) - 32, args.length)]
    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(loaded.model, config)
    model.train()
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    rng = random.Random(0)
    started, seen = time.perf_counter(), 0
    with Progress() as progress:
        task = progress.add_task("training LoRA", total=args.steps)
        for step in range(args.steps):
            batch = rng.sample(windows, args.batch)
            width = max(len(w) for w in batch)
            ids = torch.tensor([w + [tokenizer.pad_token_id] * (width - len(w)) for w in batch])
            mask = torch.tensor([[1] * len(w) + [0] * (width - len(w)) for w in batch])
            labels = ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            for group in optimiser.param_groups:  # linear decay
                group["lr"] = args.lr * (1 - step / args.steps)
            optimiser.step()
            optimiser.zero_grad()
            seen += int(mask.sum())
            progress.update(task, advance=1, description=f"training LoRA (loss {loss.item():.3f})")
            if not sys.stderr.isatty() and step % 10 == 0:
                print(f"step {step}/{args.steps} loss {loss.item():.3f} {time.perf_counter() - started:.0f}s",
                      file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(args.out / "adapter"), safe_serialization=True)
    elapsed = time.perf_counter() - started
    manifest = CardManifest.model_validate({
        "name": "pg-essays-quick", "version": "1.0.0", "domain": "startups and programming essays",
        "description": "Paul Graham's essays on startups and programming (quick LoRA for the fusion benchmark)",
        "owner": "benchmarks", "kind": "fusion", "model": {"base": BASE, "adapter": "adapter"},
        "heldout": {"corpus": str(args.corpus.resolve()), "corpus_sha256": file_sha256(args.corpus), "key": "title",
                    "seed": 0, "documents": heldout},
        "metrics": {"train_seconds": elapsed, "train_tokens": seen, "steps": args.steps}})
    dump_manifest(manifest, args.out / "card.toml")
    print(json.dumps({"card": str(args.out), "heldout": len(heldout), "train_windows": len(windows),
                      "seconds": round(elapsed, 1), "tokens": seen}))


if __name__ == "__main__":
    main()
