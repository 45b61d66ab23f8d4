"""White-box logit fusion on held-out Paul Graham essays: perplexity of every rule, and decoding speed.

Run from the repository root: `python benchmarks/fusion.py` (see --help). A 0.5B card steering the
frozen 1.5B base (CombLM's table at our scale): `python benchmarks/fusion.py --base
qwen2.5-coder-1.5b-instruct --card /path/to/0.5B-card` (the card must declare the base in
`model.steers`); the table then also has the untuned 0.5B (proxy's anti-expert and contrastive
decoding's amateur).

- Card: --card, else the trained card at /work/cards/pg-essays-card, else a quick LoRA made once by
  benchmarks/fusion_quick_card.py into benchmarks/results/pg-quick-card (10% of essays held out).
- Perplexity: `experts.fusion.evaluate` on the card's held-out essays only: half of them fit every
  rule's parameters (learned = per-model scalars + entropy gate, by NLL), the other half is scored.
  Targets: learned fusion below both base and expert (CombLM).
- Speed: greedy decoding of --speed-tokens tokens after a 64-token essay prompt, batch 1, on the
  llama.cpp runtime: the base alone (prefill then one step per token), the base through the fused
  decoder, and base + card (the LoRA applied at run time in its own context) under each rule. Runs
  are interleaved and repeated (--rounds); the best round is reported, because on a shared CPU the
  slow rounds measure neighbours. Target: fused >= 0.6x the base's tokens/s (0.5x for a 0.5B card
  on the 1.5B base, whose fused step runs both); contrastive decoding is timed too (it is a decoding
  rule, not a language model, so it has no perplexity row).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpora" / "pg-essays" / "corpus.jsonl"
TRAINED_CARD = Path("/work/cards/pg-essays-card")
QUICK_CARD = REPO / "benchmarks" / "results" / "pg-quick-card"
BASE = "smollm2-135m-instruct"
METHODS = ("mixture", "product", "proxy", "entropy", "learned")


def find_card(arg: Path | None) -> Path:
    if arg is not None:
        return arg
    if (TRAINED_CARD / "card.toml").is_file():
        return TRAINED_CARD
    if not (QUICK_CARD / "card.toml").is_file():
        print(f"no trained card at {TRAINED_CARD}; training a quick one into {QUICK_CARD}", file=sys.stderr)
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "fusion_quick_card.py"), str(QUICK_CARD)],
                       check=True)
    return QUICK_CARD


def quality(base: str, card, corpus: Path, max_tokens: int | None, window: int):
    from api.cli.context import RichProgress
    from experts.fusion.evaluate import EvalOptions, evaluate

    options = EvalOptions(max_tokens=max_tokens, window=window, speed_tokens=0)
    with RichProgress() as bars:
        def progress(stage, total):
            bars.start(stage, total)
            return bars.advance

        return evaluate(base, [card], corpus, options, progress)


def speed(base: str, card, fitted, prompt: list[int], tokens: int, rounds: int) -> dict[str, dict]:
    """Best-of-rounds decoding figures per configuration (configurations interleaved within a round)."""
    from experts.fusion.decoder import FusedDecoder
    from experts.fusion.evaluate import base_tokens_per_s, decode_stats
    from experts.fusion.fused import FusedModel

    from experts.fusion.combine import FusionParams

    plain = FusedModel(base, [])
    model = FusedModel(base, [card])
    configs = {"base: runtime greedy": None, "base: fused decoder, no card": FusedDecoder(plain, plain.params())}
    for method in METHODS:
        configs[f"fused: {method}"] = FusedDecoder(model, fitted.params[method])
    configs["contrastive decoding (base vs the card's untuned base)"] = FusedDecoder(model, FusionParams("contrastive"))
    best: dict[str, dict] = {}
    for _ in range(rounds):
        for name, decoder in configs.items():
            if decoder is None:
                figures = {"tokens_per_s": base_tokens_per_s(base, prompt, tokens)}
            else:
                stats = decode_stats(decoder, prompt, tokens)
                figures = {"tokens_per_s": stats.tokens_per_s,
                           "forward_ms_per_step": 1000 * stats.forward_s / max(1, stats.steps - 1),
                           "overhead_ms_per_step": stats.overhead_ms_per_step}
            if name not in best or figures["tokens_per_s"] > best[name]["tokens_per_s"]:
                best[name] = figures
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--card", type=Path, default=None)
    parser.add_argument("--base", default=BASE, help="the frozen base the card steers, e.g. "
                                                     "qwen2.5-coder-1.5b-instruct for a 0.5B card")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--max-tokens", type=int, default=12000, help="tokens scored per split (fit, score)")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--speed-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--speed-method", default="learned", choices=METHODS, help="the rule the speed target uses")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/fusion.json)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-quality", action="store_true", help="speed only (fits on 2,000 tokens)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["MIGHTY_LLM_THREADS"] = str(args.threads)  # the runtime's models

    from experts.fusion.cards import resolve_card

    card = resolve_card(str(find_card(args.card)))
    started = time.perf_counter()
    report, fitted = quality(args.base, card, args.corpus, 2000 if args.skip_quality else args.max_tokens,
                             args.window)
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    target = args.out or out / "fusion.json"
    # the perplexities are kept even if the (long) speed phase is interrupted
    target.write_text(json.dumps({"card": card.label, "base": args.base, "partial": "perplexity only",
                                  **report.model_dump(mode="json")}, indent=1))
    print(f"perplexity (fit on {report.fit_tokens} tokens, scored on {report.tokens}): base {report.ppl_base:.3f}, "
          f"anti {report.ppl_anti}, card {report.ppl_expert}, fused {report.ppl_fused}", file=sys.stderr, flush=True)
    from experts.fusion.corpus import split_corpus
    from experts.fusion.fused import tokenizer_of

    essay = split_corpus(args.corpus, [card]).score[0]
    prompt = tokenizer_of(args.base)(essay)["input_ids"][:64]
    figures = speed(args.base, card, fitted, prompt, args.speed_tokens, args.rounds)
    base_rate = figures["base: runtime greedy"]["tokens_per_s"]

    print(f"\nperplexity on {report.tokens} held-out tokens ({report.split}); parameters fitted on "
          f"{report.fit_tokens} others")
    print("| model | perplexity | vs base | parameters |\n|---|---|---|---|")
    rows = [("base " + args.base, report.ppl_base, ""),
            *[(f"untuned {k} (anti-expert)", v, "") for k, v in report.ppl_anti.items()],
            *[(f"card {k}", v, "") for k, v in report.ppl_expert.items()],
            *[(f"fused: {m}", report.ppl_fused[m], json.dumps(report.weights[m])) for m in METHODS],
            ("fused: mixture, equal weights", report.ppl_equal_weights, "")]
    for name, ppl, params in rows:
        print(f"| {name} | {ppl:.3f} | {100 * (ppl / report.ppl_base - 1):+.1f}% | {params[:90]} |")
    print(f"\ndecoding, batch 1, {args.speed_tokens} tokens, best of {args.rounds} rounds, {args.threads} threads")
    print("| configuration | tokens/s | x base | forward ms/step | fusion overhead ms/step |\n|---|---|---|---|---|")
    for name, f in figures.items():
        print(f"| {name} | {f['tokens_per_s']:.2f} | {f['tokens_per_s'] / base_rate:.2f} | "
              f"{f.get('forward_ms_per_step', float('nan')):.1f} | {f.get('overhead_ms_per_step', float('nan')):.2f} |")
    learned = report.ppl_fused["learned"]
    better = min(report.ppl_base, *report.ppl_expert.values())
    fused_rate = figures[f"fused: {args.speed_method}"]["tokens_per_s"]
    print(f"\ntargets: learned {100 * (1 - learned / better):+.1f}% under the better of base and card (>= 5%); "
          f"proxy {report.ppl_fused['proxy']:.3f} vs base {report.ppl_base:.3f} (lower); fused "
          f"({args.speed_method}) {fused_rate / base_rate:.2f}x the base's tokens/s (>= 0.5x)")
    result = {"card": card.label, "base": args.base, "tokens": report.tokens, "fit_tokens": report.fit_tokens,
              "ppl_base": report.ppl_base, "ppl_anti": report.ppl_anti, "ppl_expert": report.ppl_expert,
              "ppl_fused": report.ppl_fused, "learned_gain_vs_better": 1 - learned / better,
              "ppl_equal_weights": report.ppl_equal_weights, "weights": report.weights,
              "learned_beats_both": learned < report.ppl_base and learned < min(report.ppl_expert.values()),
              "speed": figures, "load_avg": os.getloadavg()[0], "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(result))
    target.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
