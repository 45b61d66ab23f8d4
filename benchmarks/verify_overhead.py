"""The verify policy's own cost: P(yes) from the logits (k orderings) against k sampled verdicts, on the
same answers under the same load.

    python benchmarks/verify_overhead.py [--questions 10] [--k 3] [--home /work/bench-cache/cascade14/home]

Per question of `data/qa/docs-qa.jsonl` (evenly spaced): the answer prompt is built by the service's
pipeline over the `docs` collection (top 5, the 700-token local context budget), the 0.5B answers it, then each way
of verifying runs right after its own fresh copy of that answer (the answer is generated again before
each, so every way starts from the same KV cache: prompt and answer cached): logits with 1 and k
orderings, and k sampled verdicts (the fallback for models without logprobs, what the earlier
benchmark measured). Their order rotates per question so load drifts hit each alike. Prints a table
and one JSON line; the collection is the one `benchmarks/cascade.py` builds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SMALL = "local/qwen2.5-coder-0.5b-instruct"
QA = REPO / "data" / "qa" / "docs-qa.jsonl"


def main() -> None:
    from indexes.collection import Home
    from rag import cascade_verify, llm
    from rag.pipeline import AnswerPipeline
    from rag.retriever import Retriever

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--home", type=Path, default=Path("/work/bench-cache/cascade14/home"))
    parser.add_argument("--context-tokens", type=int, default=700, help="The local-model budget the service uses.")
    args = parser.parse_args()
    rows = [json.loads(line) for line in QA.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [rows[int(i * len(rows) / args.questions)] for i in range(args.questions)]
    pipeline = AnswerPipeline(Retriever(Home(args.home).open("docs")), args.context_tokens)
    options = llm.LLMOptions(model=SMALL, max_tokens=256)
    llm.complete(options.model_copy(update={"max_tokens": 1}), [{"role": "user", "content": "hi"}])  # load
    ways = {"logits k=1": lambda m, a: cascade_verify.by_logits(options, m, a, 1),
            f"logits k={args.k}": lambda m, a: cascade_verify.by_logits(options, m, a, args.k),
            f"samples k={args.k}": lambda m, a: cascade_verify.by_samples(options, m, a, args.k)}
    spent: dict[str, list[float]] = {name: [] for name in ways}
    answer_ms, loads = [], [os.getloadavg()[0]]
    print(f"{'#':>2} {'answer s':>8} " + " ".join(f"{name:>14}" for name in ways), flush=True)
    for number, row in enumerate(rows):
        prepared = pipeline.prepare(row["question"], pipeline.retrieve(row["question"], 5), options)
        names = list(ways)
        names = names[number % len(names):] + names[:number % len(names)]
        for name in names:
            started = time.perf_counter()
            answer = llm.complete(options, prepared.messages).text  # the cache now holds prompt + answer
            answer_ms.append((time.perf_counter() - started) * 1000)
            found = ways[name](prepared.messages, answer)
            spent[name].append(found.latency_ms)
        loads.append(os.getloadavg()[0])
        print(f"{number + 1:>2} {answer_ms[-1] / 1000:>8.1f} " +
              " ".join(f"{spent[name][-1] / 1000:>13.1f}s" for name in ways), flush=True)
    summary = {"small": SMALL, "questions": args.questions,
               "mean_answer_ms": round(statistics.mean(answer_ms), 1),
               "mean_ms": {name: round(statistics.mean(v), 1) for name, v in spent.items()},
               "median_ms": {name: round(statistics.median(v), 1) for name, v in spent.items()},
               "load_average": [round(min(loads), 1), round(max(loads), 1)]}
    print("mean s: " + ", ".join(f"{name} {ms / 1000:.1f}" for name, ms in summary["mean_ms"].items())
          + f"; answer {summary['mean_answer_ms'] / 1000:.1f}; load {summary['load_average']}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
