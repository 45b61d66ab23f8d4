"""Retrieval evaluation on BEIR-format folders (corpus.jsonl, queries.jsonl, qrels/test.tsv)."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from indexes.collection import Collection, Home
from indexes.config import CollectionConfig
from indexes.documents import SourceDocument
from indexes.onnx_embedder import QUANTIZED_FILE
from indexes.readers import read_jsonl_lines
from indexes.writer import ProgressSink
from rag.metrics import mrr_at_k, ndcg_at_k, ndcg_at_k_leaderboard, percentile, recall_at_k
from rag.retriever import Retriever
from rag.schemas import Mode, RetrievalRequest

_DEPTH = 100


class DatasetError(ValueError):
    pass


@dataclass
class BeirDataset:
    folder: Path
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    @classmethod
    def load(cls, folder: Path) -> "BeirDataset":
        for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
            if not (folder / name).is_file():
                raise DatasetError(f"{folder / name}: missing; a BEIR folder needs corpus.jsonl, "
                                   "queries.jsonl and qrels/test.tsv")
        queries = {}
        with open(folder / "queries.jsonl", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        record = json.loads(line)
                        queries[str(record["_id"])] = record["text"]
                    except (json.JSONDecodeError, KeyError, TypeError) as exc:
                        raise DatasetError(f"{folder / 'queries.jsonl'}:{number}: bad query line ({exc})") from exc
        qrels: dict[str, dict[str, int]] = {}
        with open(folder / "qrels" / "test.tsv", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                parts = line.rstrip("\n").split("\t")
                if number == 1 and parts[0] == "query-id":
                    continue
                if len(parts) != 3 or not parts[2].lstrip("-").isdigit():
                    raise DatasetError(f"{folder / 'qrels/test.tsv'}:{number}: expected 'query-id<TAB>corpus-id<TAB>score'")
                qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
        return cls(folder, queries, qrels)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        with open(self.folder / "corpus.jsonl", "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()


def build_index(home: Home, dataset: BeirDataset, config: CollectionConfig,
                progress: ProgressSink | None = None) -> tuple[Collection, float]:
    """Index the corpus once per (content, settings); returns the collection and passages/s."""
    recipe = QUANTIZED_FILE if config.embedder.backend == "onnx-int8" else ""  # a new int8 recipe, new vectors
    key = hashlib.sha256((dataset.fingerprint() + config.model_dump_json(exclude={"name"}) + recipe).encode()
                         ).hexdigest()[:16]
    name = f"eval-{key}"
    throughput_file = home.collections_dir / name / "eval-throughput.json"
    if throughput_file.exists():
        return home.open(name), json.loads(throughput_file.read_text())["passages_per_s"]
    collection = home.open_or_create(config.model_copy(update={"name": name}))
    started = time.perf_counter()
    with collection.writer(progress) as writer, open(dataset.folder / "corpus.jsonl", encoding="utf-8") as handle:
        documents = [d for d in read_jsonl_lines(handle, str(dataset.folder / "corpus.jsonl"),
                                                 config.max_document_bytes) if isinstance(d, SourceDocument)]
        if progress:
            progress.start("chunking", len(documents))
        for document in documents:
            writer.upsert(document)
            if progress:
                progress.advance(1)
        writer.commit()
    rate = len(documents) / (time.perf_counter() - started)
    throughput_file.write_text(json.dumps({"passages_per_s": rate}))
    return collection, rate


def evaluate(collection: Collection, dataset: BeirDataset, mode: Mode, index_rate: float,
             progress: ProgressSink | None = None, **request_options) -> dict[str, float | int | str]:
    retriever = Retriever(collection)
    judged = [q for q in dataset.queries if q in dataset.qrels]
    if not judged:
        raise DatasetError(f"{dataset.folder}: no query in queries.jsonl has judgements in qrels/test.tsv")
    retriever.search(RetrievalRequest(query=dataset.queries[judged[0]], mode=mode))  # warm caches and JIT
    totals = {"ndcg@10": 0.0, "ndcg@10_lb": 0.0, "recall@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}
    latencies = []
    if progress:
        progress.start(f"evaluating {mode}", len(judged))
    for query_id in judged:
        started = time.perf_counter()
        result = retriever.search(RetrievalRequest(query=dataset.queries[query_id], mode=mode,
                                                   top_k=_DEPTH, **request_options))
        latencies.append((time.perf_counter() - started) * 1000)
        ranking = list(dict.fromkeys(hit.id for hit in result.hits))
        qrels = dataset.qrels[query_id]
        totals["ndcg@10"] += ndcg_at_k(ranking, qrels)
        totals["ndcg@10_lb"] += ndcg_at_k_leaderboard(ranking, qrels)
        totals["recall@10"] += recall_at_k(ranking, qrels, 10)
        totals["recall@100"] += recall_at_k(ranking, qrels, 100)
        totals["mrr@10"] += mrr_at_k(ranking, qrels)
        if progress:
            progress.advance(1)
    report: dict[str, float | int | str] = {"dataset": dataset.folder.name, "mode": mode}
    report.update({name: round(value / len(judged), 4) for name, value in totals.items()})
    report.update({"queries": len(judged), "p50_ms": round(percentile(latencies, 50), 2),
                   "p95_ms": round(percentile(latencies, 95), 2),
                   "index_passages_per_s": round(index_rate, 1)})
    return report
