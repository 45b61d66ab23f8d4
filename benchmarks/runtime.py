"""Local-model runtime speed: llama.cpp vs transformers, and fused decoding vs its base.

Run from the repository root: `python benchmarks/runtime.py [--models ...] [--tokens 48] [--rounds 2]`.

- Prompt tokens/s: one prefill of a ~200-token prompt (a passage of data/docs) from an empty cache.
- Generation tokens/s: greedy decoding of --tokens tokens after it, one step per token (prefill excluded).
  llama.cpp runs the registered GGUF (SmolLM2-135M Q4_1, Qwen2.5-Coder-0.5B mostly Q4_K); transformers
  runs the same GGUF dequantised to float32 (`rag.runtime.convert`), both behind `LocalModel`.
- Fused: the base with one LoRA card (random, r=4 on q/v/down) fused by mixture, vs the base alone, on
  llama.cpp (target >= 0.6x).
Each figure is the best of --rounds interleaved rounds, because on a shared CPU slow rounds measure the
neighbours; the load average is printed with the table.
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
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does; see rag/runtime/__init__.py
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPT_SOURCE = REPO / "data" / "docs"


def prompt_text() -> str:
    texts = sorted(p for p in PROMPT_SOURCE.rglob("*") if p.suffix in (".md", ".txt"))
    return " ".join(texts[0].read_text(encoding="utf-8").split()[:150])


def measure(model, prompt: list[int], tokens: int) -> dict[str, float]:
    with model.lock:
        model.reset()
        started = time.perf_counter()
        logits = model.prefill(prompt)
        prefill = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(tokens - 1):
            logits = model.step(int(logits.argmax()))
        decode = time.perf_counter() - started
    return {"prompt_tokens_per_s": len(prompt) / prefill, "tokens_per_s": (tokens - 1) / decode}


def engines(name: str, which: list[str]) -> dict:
    from experts.models import load_base
    from rag.runtime import load_model
    from rag.runtime.hf import TransformersModel

    found = {"llama.cpp": load_model(name)}
    if "transformers" in which:
        loaded = load_base(name)
        found["transformers"] = TransformersModel(name, Path(loaded.source), model=loaded.model,
                                                  tokenizer=loaded.tokenizer)
    return found


def fused_speed(base: str, prompt: list[int], tokens: int, rounds: int) -> dict[str, float]:
    from experts.fusion.cards import resolve_card
    from experts.fusion.combine import FusionParams
    from experts.fusion.decoder import FusedDecoder
    from experts.fusion.evaluate import base_tokens_per_s, decode_stats
    from experts.fusion.fused import FusedModel
    from tests.fusion_helpers import make_lora_card

    card = resolve_card(str(make_lora_card(Path(tempfile.mkdtemp()) / "card", "bench", scale=0.02)))
    decoder = FusedDecoder(FusedModel(base, [card]), FusionParams("mixture", (0.7, 0.3)))
    best = {"base": 0.0, "fused": 0.0}
    for _ in range(rounds):
        best["base"] = max(best["base"], base_tokens_per_s(base, prompt, tokens))
        best["fused"] = max(best["fused"], decode_stats(decoder, prompt, tokens).tokens_per_s)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--engines", nargs="+", default=["llama.cpp", "transformers"])
    parser.add_argument("--fusion-base", default="smollm2-135m-instruct")
    args = parser.parse_args()
    import torch

    from rag.runtime.llama import threads_for

    threads = threads_for(args.models[0])  # MIGHTY_LLM_THREADS, else the available cores
    torch.set_num_threads(threads)
    text = prompt_text()
    rows, result = [], {"threads": threads, "tokens": args.tokens}
    for name in args.models:
        models = engines(name, args.engines)
        prompt = models["llama.cpp"].encode(text)[:200]
        best: dict[str, dict[str, float]] = {}
        for _ in range(args.rounds):
            for engine, model in models.items():
                figures = measure(model, prompt, args.tokens)
                if engine not in best or figures["tokens_per_s"] > best[engine]["tokens_per_s"]:
                    best[engine] = figures
        for engine, figures in best.items():
            rows.append((name, engine, len(prompt), figures))
        result[name] = best
        del models
    base_model = engines(args.fusion_base, ["llama.cpp"])["llama.cpp"]
    fused = fused_speed(args.fusion_base, base_model.encode(text)[:64], args.tokens, args.rounds)
    result["fusion"] = {"base": args.fusion_base, **fused, "ratio": fused["fused"] / fused["base"]}
    result["load_avg"] = os.getloadavg()[0]
    print(f"\n{threads} threads, {args.tokens} generated tokens, best of {args.rounds}, "
          f"load average {result['load_avg']:.1f}")
    print("| model | engine | prompt tokens | prompt tok/s | generation tok/s |\n|---|---|---|---|---|")
    for name, engine, length, figures in rows:
        print(f"| {name} | {engine} | {length} | {figures['prompt_tokens_per_s']:.0f} | {figures['tokens_per_s']:.1f} |")
    print(f"\nfused decoding on llama.cpp, {args.fusion_base} + 1 LoRA card (mixture): {fused['fused']:.1f} tok/s vs "
          f"base {fused['base']:.1f} tok/s = {result['fusion']['ratio']:.2f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
