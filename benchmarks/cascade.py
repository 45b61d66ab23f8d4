"""Cascade 0.5B -> 1.5B: the cost-quality curve on the docs and pg-essays QA sets, against always-small
and always-large, and the verifier's own overhead.

    python benchmarks/cascade.py [--limit 25] [--sets docs pg-essays] [--reuse]

Per set, one `mighty eval answers --llm cascade:<small>><large>?policy=verify&k=3 --out RECORDS` runs
the small model, both in-pipeline confidences (self-verification: P(yes) from the small model's
logits, averaged over k orderings of its examples, each ordering kept so `verify-k1` is computed
from the same pass; and faithfulness) and the large model once per question; every threshold is then evaluated offline from
the records (`rag.cascade_curve`). The router policy is scored by leave-one-out over the same
records: for each question a router is trained on the others' outcomes (the query embedding ->
was the small model right) and applied to it, so no question is judged by a router that saw it.

Targets (issue 14): accuracy >= 95% of always-large while escalating <= 50%, with mean latency below
always-large. Records and collections are cached under /work/bench-cache/cascade (`--reuse` reads
existing records instead of answering again). Prints tables, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rag import cascade_curve  # noqa: E402

CACHE = Path(os.environ.get("MIGHTY_BENCH_CACHE", "/work/bench-cache/cascade"))
SMALL, LARGE = "local/qwen2.5-coder-0.5b-instruct", "local/qwen2.5-coder-1.5b-instruct"
PG_CORPUS = REPO.parent / "shared" / "corpora" / "pg-essays" / "corpus.jsonl"
SETS = {"docs": (REPO / "data" / "qa" / "docs-qa.jsonl", "docs"),
        "pg-essays": (REPO / "data" / "qa" / "pg-essays-qa.jsonl", "pg-essays")}
TARGET_RELATIVE, TARGET_ESCALATED = 0.95, 0.5


def subset(qa: Path, limit: int | None, target: Path) -> Path:
    """N questions evenly spaced through the set (every part of the corpus is asked about)."""
    lines = [line for line in qa.read_text(encoding="utf-8").splitlines() if line.strip()]
    if limit and limit < len(lines):
        lines = [lines[int(i * len(lines) / limit)] for i in range(limit)]
    target.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return target


def ensure_collection(home: Path, name: str, qa: Path) -> None:
    """docs: data/docs. pg-essays: the essays the chosen questions ask about (all their chunks), so a
    short run indexes a few hundred chunks instead of the whole corpus on a shared CPU."""
    from indexes.collection import CollectionNotFound, Home

    try:
        Home(home).open(name)
        return
    except CollectionNotFound:
        pass
    if name == "docs":
        paths = [str(REPO / "data" / "docs")]
    else:
        titles = {json.loads(line)["title"] for line in qa.read_text(encoding="utf-8").splitlines() if line.strip()}
        corpus = CACHE / "pg-subset-corpus.jsonl"
        with open(PG_CORPUS, encoding="utf-8") as handle:
            corpus.write_text("".join(line for line in handle if json.loads(line)["title"] in titles), encoding="utf-8")
        paths = [str(corpus)]
    subprocess.run([sys.executable, "-m", "api.cli.main", "--home", str(home), "index", "add", *paths,
                    "--collection", name], cwd=REPO, check=True, capture_output=True)


def evaluate(home: Path, name: str, collection: str, qa: Path, k: int, reuse: bool) -> Path:
    records = CACHE / f"{name}.jsonl"
    if reuse and records.exists():
        return records
    llm = f"cascade:{SMALL}>{LARGE}?policy=verify&threshold=0.5&k={k}"
    with open(CACHE / f"{name}-eval.log", "w", encoding="utf-8") as log:  # progress and errors, to follow a long run
        subprocess.run([sys.executable, "-m", "api.cli.main", "--home", str(home), "eval", "answers", str(qa),
                        "-c", collection, "--llm", llm, "--cards", "none", "--out", str(records), "--json"],
                       cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=log, stderr=subprocess.STDOUT)
    return records


def add_router_loo(home: Path, collection: str, records: list) -> None:
    """Leave-one-out router confidences (and the router's own time) on each record."""
    import numpy as np

    from indexes.collection import Home
    from indexes.embedders import encode_queries
    from rag.cascade_router import RouterError, train

    target = Home(home).open(collection)
    labels = [r.small.correct for r in records]
    vectors = encode_queries(target.embedder, [r.question for r in records])
    for i, record in enumerate(records):
        started = time.perf_counter()  # what serving pays: one query embedding and a dot product
        vector = encode_queries(target.embedder, [record.question])[0]
        embed_ms = (time.perf_counter() - started) * 1000
        others = [j for j in range(len(records)) if j != i]
        try:
            router = train(vectors[others], [labels[j] for j in others], target.config.embedder.model, SMALL)
            record.confidence["router"] = router.confidence(vector)
        except RouterError:  # the others are all right or all wrong: the prior decides
            record.confidence["router"] = float(np.mean([labels[j] for j in others]))
        record.overhead_ms["router"] = round(embed_ms, 2)


def add_verify_k1(records: list) -> bool:
    """When verify read P(yes) from the logits for several orderings of its examples, the k=1 cascade
    (first ordering only, its own pass time) is computable from the same records: `verify-k1`."""
    if not all(len(r.verify.get("per_ordering", [])) > 1 or r.verify.get("method") == "abstained" for r in records):
        return False
    for record in records:
        first = record.verify.get("per_ordering") or [0.0]
        record.confidence["verify-k1"] = first[0]
        record.overhead_ms["verify-k1"] = (record.verify.get("ordering_ms") or [0.0])[0]
    return True


def verify_reading(records: list) -> dict:
    """How verify's requests were read: tokens per question, the share taken from the KV cache, and how
    much probability the model put on the two verdict words."""
    read = [r.verify for r in records if r.verify.get("method") == "logits"]
    if not read:
        return {}
    prompt = sum(v["prompt_tokens"] for v in read)
    return {"questions": len(read), "orderings": round(sum(len(v["per_ordering"]) for v in read) / len(read), 2),
            "prompt_tokens": round(prompt / len(read), 1),
            "cached_share": round(sum(v["cached_tokens"] for v in read) / max(prompt, 1), 3),
            "yes_no_mass": round(sum(v["mass"] or 0 for v in read) / len(read), 3)}


def auc(records: list, policy: str) -> float | None:
    """How well a confidence ranks the small model's right answers above its wrong ones (0.5: no signal)."""
    right = [r.confidence[policy] for r in records if r.small.correct]
    wrong = [r.confidence[policy] for r in records if not r.small.correct]
    if not right or not wrong:
        return None
    return round(sum((a > b) + 0.5 * (a == b) for a in right for b in wrong) / (len(right) * len(wrong)), 3)


def summarise(records: list) -> dict:
    small, large = cascade_curve.baselines(records)
    policies = cascade_curve.policies(records)
    if add_verify_k1(records):
        policies.insert(policies.index("verify") + 1 if "verify" in policies else 0, "verify-k1")
    result = {"questions": len(records), "always_small": small.__dict__, "always_large": large.__dict__,
              "overhead_ms": {p: round(sum(r.overhead_ms.get(p, 0) for r in records) / len(records), 1)
                              for p in policies},
              "small_ms": small.mean_latency_ms, "auc": {p: auc(records, p) for p in policies},
              "verify_reading": verify_reading(records), "curves": {}, "fits": {}}
    for policy in policies:
        curve = cascade_curve.sweep(records, policy)
        result["curves"][policy] = cascade_curve.as_dicts(
            [p for p in curve if p.threshold is not None and round(p.threshold * 10, 6) % 1 == 0])
        fit = cascade_curve.fit(records, policy, target_relative=TARGET_RELATIVE)
        budget = cascade_curve.fit(records, policy, budget=TARGET_ESCALATED)
        result["fits"][policy] = {
            "for_95pct": fit.__dict__ if fit else None, "within_50pct": budget.__dict__ if budget else None,
            "targets_met": bool(budget and (budget.relative_accuracy or 0) >= TARGET_RELATIVE
                                and budget.mean_latency_ms < large.mean_latency_ms)}
    return result


def print_set(name: str, summary: dict) -> None:
    small, large = (cascade_curve.Point(**summary[k]) for k in ("always_small", "always_large"))
    print(f"\n== {name}: {summary['questions']} questions; policy overhead per question (ms): "
          f"{summary['overhead_ms']}; small answer {small.mean_latency_ms / 1000:.1f} s")
    print(f"AUC of each confidence (small right vs wrong): {summary['auc']}; verify requests: {summary['verify_reading']}")
    for policy, points in summary["curves"].items():
        print(f"\npolicy {policy}")
        print(cascade_curve.table([small, large, *(cascade_curve.Point(**p) for p in points)]))
        fits = summary["fits"][policy]
        for label, point in (("fewest escalations for >=95% of large", fits["for_95pct"]),
                             ("best within 50% escalated", fits["within_50pct"])):
            if point:
                print(f"  {label}: threshold {point['threshold']:.2f}, accuracy {point['accuracy']:.3f} "
                      f"({point['relative_accuracy']}), escalated {point['escalated']:.2f}, "
                      f"mean {point['mean_latency_ms'] / 1000:.1f} s")
        print(f"  targets met: {fits['targets_met']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=25, help="Questions per set (evenly spaced).")
    parser.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SETS))
    parser.add_argument("--k", type=int, default=3, help="Self-verification samples.")
    parser.add_argument("--reuse", action="store_true", help="Read cached records instead of answering again.")
    parser.add_argument("--pg-qa", type=Path, default=None, help="The pg-essays QA set, if not in data/qa.")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MIGHTY_MODEL_CACHE", str(Path.home() / ".mighty" / "models"))
    home = CACHE / "home"
    report = {"small": SMALL, "large": LARGE, "k": args.k, "cpus": os.cpu_count(), "sets": {}}
    for name in args.sets:
        qa, collection = SETS[name]
        if name == "pg-essays" and args.pg_qa:
            qa = args.pg_qa
        chosen = subset(qa, args.limit, CACHE / f"{name}-qa-{args.limit}.jsonl")
        ensure_collection(home, collection, chosen)
        records, rejected = cascade_curve.load_records(evaluate(home, name, collection, chosen, args.k, args.reuse))
        records = [r for r in records if r.small.error is None and r.large.error is None]
        if not records:
            report["sets"][name] = {"skipped": "no answered question"}
            continue
        add_router_loo(home, collection, records)
        summary = summarise(records)
        report["sets"][name] = summary
        print_set(name, summary)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
