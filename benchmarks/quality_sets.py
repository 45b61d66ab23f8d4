"""The BEIR-format sets `benchmarks/quality.py` scores, each built deterministically from data on disk.

- msmarco: the shared MS MARCO subset, as is.
- pg-essays: a known-item set over the shared Paul Graham essay chunks. Queries are simulated the
  way Azzopardi, de Rijke & Balog (SIGIR 2007) simulate known-item queries: pick chunks with a
  seeded generator, then draw 3-5 distinct words from each with probability proportional to
  tf x idf (their "discriminative" model: the rare words a user who remembers a passage types),
  in the order they appear. The one relevant document is the chunk they came from. Nothing is
  hand-picked. pg-essays-popular: the same chunks and lengths with their "popular" model (p ~ tf).
- pg-questions: the natural questions in `data/qa/pg-essays-qa.jsonl` over the same essay chunks
  (relevant = the chunk named): how the essays are asked about when not by remembered words. Its
  collection is the pg-essays one, so it costs no index of its own.
- docs-qa: the questions in `data/qa/docs-qa.jsonl` over `data/docs`, relevant = the `doc` named.
- arabic: `benchmarks/data/arabic-qa`, a small Arabic reading-comprehension-style set written for
  this project (questions paraphrase their passage rather than quote it).
Built folders go to a scratch folder outside the project; the shared corpus is linked, not copied.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")


def msmarco() -> Path | None:
    folder = SHARED / "benchmarks" / "msmarco"
    return folder if (folder / "corpus.jsonl").is_file() else None


def arabic() -> Path | None:
    folder = ROOT / "benchmarks" / "data" / "arabic-qa"
    return folder if (folder / "corpus.jsonl").is_file() else None


def _write_beir(folder: Path, corpus: Path | list[dict], queries: dict[str, str],
                qrels: dict[str, dict[str, int]]) -> Path:
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    target = folder / "corpus.jsonl"
    if isinstance(corpus, Path):
        if not target.exists():
            target.symlink_to(corpus)
    else:
        target.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in corpus), encoding="utf-8")
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": k, "text": v}, ensure_ascii=False) + "\n" for k, v in queries.items()),
        encoding="utf-8")
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{g}" for q, docs in qrels.items() for d, g in docs.items()]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def pg_essays(work: Path, queries: int = 150, seed: int = 0, model: str = "discriminative") -> Path | None:
    """Known-item queries simulated from the essay chunks (see the module docstring); `model` is
    Azzopardi's term-selection model: "discriminative" (p ~ tf x idf) or "popular" (p ~ tf)."""
    source = SHARED / "corpora" / "pg-essays" / "corpus.jsonl"
    if not source.is_file():
        return None
    from bm25s.stopwords import STOPWORDS_EN

    stop = set(STOPWORDS_EN)
    docs = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    words = [[w.lower() for w in _WORD.findall(d["text"])] for d in docs]
    df = Counter(w for ws in words for w in set(ws))
    rng = np.random.default_rng(seed)
    chosen_docs = sorted(rng.choice(len(docs), size=min(queries, len(docs)), replace=False).tolist())
    query_text, qrels = {}, {}
    for number, index in enumerate(chosen_docs):
        counts = Counter(w for w in words[index] if w not in stop)
        vocab = sorted(counts)
        if len(vocab) < 5:
            continue
        weight = np.asarray([counts[w] * (math.log(len(docs) / df[w]) if model == "discriminative" else 1.0)
                             for w in vocab])
        length = int(rng.integers(3, 6))
        picked = set(rng.choice(len(vocab), size=length, replace=False, p=weight / weight.sum()).tolist())
        first = {}
        for position, w in enumerate(words[index]):
            first.setdefault(w, position)
        terms = sorted((vocab[i] for i in picked), key=lambda w: first[w])
        query_id = f"pg{number:03d}"
        query_text[query_id] = " ".join(terms)
        qrels[query_id] = {docs[index]["_id"]: 1}
    name = "pg-essays" if model == "discriminative" else f"pg-essays-{model}"
    return _write_beir(work / name, source, query_text, qrels)


def pg_questions(work: Path, questions: Path = ROOT / "data" / "qa" / "pg-essays-qa.jsonl") -> Path | None:
    """Natural questions about the essays, each judged relevant to the chunk it was written from."""
    source = SHARED / "corpora" / "pg-essays" / "corpus.jsonl"
    if not source.is_file() or not questions.is_file():
        return None
    records = [json.loads(line) for line in questions.read_text(encoding="utf-8").splitlines() if line.strip()]
    return _write_beir(work / "pg-questions", source, {r["id"]: r["question"] for r in records},
                       {r["id"]: {r["doc"]: 1} for r in records})


def docs_qa(work: Path, questions: Path = ROOT / "data" / "qa" / "docs-qa.jsonl") -> Path | None:
    """`data/qa/docs-qa.jsonl` questions over `data/docs`, read exactly as `mighty index add` reads them."""
    if not questions.is_file():
        return None
    from indexes.documents import SourceDocument
    from indexes.readers import read_paths

    corpus = [{"_id": d.id, "title": d.title, "text": d.text, "metadata": d.metadata}
              for d in read_paths([str(ROOT / "data" / "docs")], 10 * 1024 * 1024) if isinstance(d, SourceDocument)]
    query_text, qrels = {}, {}
    for line in questions.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            query_text[record["id"]] = record["question"]
            qrels[record["id"]] = {record["doc"]: 1}
    return _write_beir(work / "docs-qa", corpus, query_text, qrels)


def available(work: Path, extra: list[Path], only: list[str] | None = None,
              qa: Path = ROOT / "data" / "qa" / "docs-qa.jsonl") -> list[Path]:
    """Every set that can be built here (or those named in `only`), then any BEIR folders given."""
    builders = {"msmarco": msmarco, "pg-essays": lambda: pg_essays(work),
                "pg-essays-popular": lambda: pg_essays(work, model="popular"), "pg-questions": lambda: pg_questions(work),
                "docs-qa": lambda: docs_qa(work, qa),
                "arabic-qa": arabic}
    built = [build() for name, build in builders.items() if not only or name in only]
    return [p for p in built if p is not None] + list(extra)
