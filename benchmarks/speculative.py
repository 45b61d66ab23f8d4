"""Speculative decoding speed: the Qwen2.5-Coder 1.5B alone vs drafted by the 0.5B (batch 1, greedy).

Run from the repository root: `python benchmarks/speculative.py [--questions 10] [--tokens 48] [--threads 2]`.

Prompts are questions of `data/qa/docs-qa.jsonl`, asked retrieval-free (every other one) or with the
opening of the document that answers it as context (the others), through the target's chat template.
Per prompt, interleaved so load drifts hit every configuration alike:

- `alone`: the 1.5B as `local/` serves it without a draft (llama.cpp defaults: repacked weights, no
  flash attention);
- `alone-exact`: the 1.5B with the batch-invariant settings a speculative target uses (flash attention,
  no repacking, one thread for one-token steps), one token per step: the reference the drafted output
  must equal token for token;
- `drafted`: the same 1.5B verifying the 0.5B's guesses (`rag.runtime.speculative`), always drafting;
- `switched`: the same pair with the cost-aware switch-off as served to operator pairs
  (`rag.runtime.draft_cost`, kept across prompts): drafting stops while the measured acceptance and
  step costs predict a slowdown, and is measured again after 128 plain tokens.

tokens/s is completion tokens over the whole generation's wall time (prompt evaluation included, and for
`drafted` the draft's own prompt evaluation too), both caches emptied before each prompt.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does; see rag/runtime/__init__.py
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QA = REPO / "data" / "qa" / "docs-qa.jsonl"
SYSTEM = "You answer questions about the Mighty RAG service briefly and precisely."


def prompts(count: int, context_words: int) -> list[tuple[str, list[dict]]]:
    rows = [json.loads(line) for line in QA.read_text(encoding="utf-8").splitlines() if line.strip()][:count]
    made = []
    for index, row in enumerate(rows):
        if index % 2:
            doc = REPO / "data" / row["doc"]
            context = " ".join(doc.read_text(encoding="utf-8").split()[:context_words])
            made.append(("context", [{"role": "system", "content": f"{SYSTEM}\nContext: {context}"},
                                     {"role": "user", "content": row["question"]}]))
        else:
            made.append(("plain", [{"role": "system", "content": SYSTEM}, {"role": "user", "content": row["question"]}]))
    return made


def timed(model, messages, options) -> tuple[object, float]:
    model.reset()
    started = time.perf_counter()
    result = model.generate(messages, options)
    return result, time.perf_counter() - started


def load_average() -> float:
    return os.getloadavg()[0]


def main() -> None:
    from rag.runtime import LOOP_NGRAM, SamplingOptions, load_model
    from rag.runtime.registry import QWEN_05B, QWEN_15B
    from rag.runtime.draft_cost import DraftCost
    from rag.runtime.speculative import SpeculativeModel

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=QWEN_15B)
    parser.add_argument("--draft", default=QWEN_05B)
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context-words", type=int, default=120)
    args = parser.parse_args()

    alone = load_model(args.target, threads=args.threads)
    exact = load_model(args.target, threads=args.threads, batch_invariant=True)
    draft = load_model(args.draft, threads=args.threads)
    drafted = SpeculativeModel(exact, draft)
    cost = DraftCost(min_speedup=1.0)
    switched = SpeculativeModel(exact, draft, cost=cost)
    options = SamplingOptions(max_tokens=args.tokens, no_repeat_ngram=LOOP_NGRAM)  # what local/ chat uses
    loads = [load_average()]
    totals = {name: [0, 0.0] for name in ("alone", "alone-exact", "drafted", "switched")}
    guessed = accepted = identical = same_as_default = 0
    print(f"{'#':>2} {'prompt':7} {'tokens':>6} {'alone':>7} {'exact':>7} {'drafted':>7} {'switch':>7} {'accept':>6} "
          f"{'k':>2} same  predicted", 
          flush=True)
    for number, (kind, messages) in enumerate(prompts(args.questions, args.context_words), start=1):
        runs = {}
        for name, model in (("alone", alone), ("alone-exact", exact), ("drafted", drafted), ("switched", switched)):
            runs[name] = timed(model, messages, options)
            totals[name][0] += runs[name][0].completion_tokens
            totals[name][1] += runs[name][1]
        reference, spec = runs["alone-exact"][0], runs["drafted"][0]
        same = spec.token_ids == reference.token_ids and runs["switched"][0].token_ids == reference.token_ids
        identical += same
        same_as_default += runs["alone"][0].token_ids == reference.token_ids
        guessed, accepted = guessed + spec.drafted, accepted + spec.accepted
        rates = {name: result.completion_tokens / seconds for name, (result, seconds) in runs.items()}
        print(f"{number:>2} {kind:7} {spec.completion_tokens:>6} {rates['alone']:>7.2f} {rates['alone-exact']:>7.2f} "
              f"{rates['drafted']:>7.2f} {rates['switched']:>7.2f} {spec.accepted / max(1, spec.drafted):>6.2f} "
              f"{drafted.guesses:>2} {same!s:5} {cost.speedup() or 0:.2f}{'' if cost.on else ' (off)'}",
              flush=True)
        loads.append(load_average())
    speed = {name: tokens / seconds for name, (tokens, seconds) in totals.items()}
    summary = {
        "target": args.target, "draft": args.draft, "prompts": args.questions, "max_tokens": args.tokens,
        "threads": args.threads, "tokens_per_s": {k: round(v, 3) for k, v in speed.items()},
        "speedup_vs_alone": round(speed["drafted"] / speed["alone"], 3),
        "speedup_vs_alone_exact": round(speed["drafted"] / speed["alone-exact"], 3),
        "switched_vs_alone": round(speed["switched"] / speed["alone"], 3),
        "switch": {"switched_off": cost.switched_off, "on_at_end": cost.on,
                   "predicted_speedup": round(cost.speedup() or 0, 3), "acceptance": round(cost.acceptance(), 3),
                   "step_ms": round(cost.step_ms.value or 0, 1), "draft_ms": round(cost.draft_ms.value or 0, 1),
                   "verify_ms": round(cost.verify_ms.value or 0, 1), "guesses": round(cost.guesses.value or 0, 2)},
        "acceptance": round(accepted / max(1, guessed), 3), "draft_tokens": guessed, "accepted_tokens": accepted,
        "identical_outputs": f"{identical}/{args.questions}",
        "default_settings_same_output": f"{same_as_default}/{args.questions}",
        "load_average": [round(min(loads), 1), round(max(loads), 1)],
    }
    print(f"\ntokens/s: alone {speed['alone']:.2f}, alone-exact {speed['alone-exact']:.2f}, drafted "
          f"{speed['drafted']:.2f} ({summary['speedup_vs_alone']}x alone), with the switch-off {speed['switched']:.2f} "
          f"({summary['switched_vs_alone']}x alone); acceptance {summary['acceptance']}; "
          f"identical {summary['identical_outputs']}; load average {summary['load_average']}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
