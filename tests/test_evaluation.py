"""Metrics on hand-computed cases, and `mighty eval retrieval` end to end on a small BEIR folder."""
from __future__ import annotations

import json
import math

import pytest

from rag.metrics import mrr_at_k, ndcg_at_k, ndcg_at_k_leaderboard, percentile, recall_at_k
from tests.conftest import MSMARCO
from tests.helpers import run_mighty


def test_metrics_by_hand():
    qrels = {"a": 3, "b": 1, "c": 2}
    ranking = ["x", "b", "a"]
    dcg = 1 / math.log2(3) + 3 / math.log2(4)
    assert ndcg_at_k(ranking, qrels) == pytest.approx(dcg / (3 + 2 / math.log2(3) + 1 / math.log2(4)))
    assert ndcg_at_k_leaderboard(ranking, qrels) == pytest.approx(dcg / (3 + 1 / math.log2(3)))
    assert ndcg_at_k_leaderboard(["a", "c", "b"], qrels) == 1.0
    assert ndcg_at_k_leaderboard(["x", "y"], qrels) == 0.0
    assert recall_at_k(ranking, qrels, 2) == pytest.approx(1 / 3)
    assert mrr_at_k(ranking, qrels) == 0.5 and mrr_at_k(["x"], qrels) == 0.0
    assert percentile([1, 2, 3, 4], 50) == 2.5


def test_eval_cli_on_a_beir_subset(tmp_path):
    subset = tmp_path / "tiny"
    (subset / "qrels").mkdir(parents=True)
    qrels = [line.split("\t") for line in (MSMARCO / "qrels" / "test.tsv").read_text().split("\n") if line]
    queries = sorted({q for q, _, _ in qrels})[:4]
    judged = {d for q, d, _ in qrels if q in queries}
    corpus = [line for line in (MSMARCO / "corpus.jsonl").read_text().split("\n") if line]
    keep = [line for line in corpus if json.loads(line)["_id"] in judged] + corpus[:150]
    (subset / "corpus.jsonl").write_text("\n".join(dict.fromkeys(keep)) + "\n")
    (subset / "queries.jsonl").write_text("\n".join(
        line for line in (MSMARCO / "queries.jsonl").read_text().split("\n") if line and json.loads(line)["_id"] in queries))
    (subset / "qrels" / "test.tsv").write_text("\n".join("\t".join(r) for r in qrels if r[0] in queries) + "\n")
    home = tmp_path / "home"
    result = run_mighty(home, "eval", "retrieval", str(subset), "--mode", "hybrid", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["queries"] == 4
    for key in ("ndcg@10", "ndcg@10_lb", "recall@10", "recall@100", "mrr@10"):
        assert 0.0 <= report[key] <= 1.0
    assert report["ndcg@10_lb"] >= report["ndcg@10"] > 0.3
    assert report["index_passages_per_s"] > 0 and report["p95_ms"] >= report["p50_ms"] > 0
    cached = run_mighty(home, "eval", "retrieval", str(subset), "--mode", "bm25", "--json")
    assert "embedding" not in cached.stderr  # the cached index was reused, nothing re-embedded
    assert json.loads(cached.stdout)["queries"] == 4


def test_eval_cli_names_a_broken_dataset(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text("")
    (tmp_path / "queries.jsonl").write_text('{"_id": "1", "text": "q"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("1\tonly-two-columns\n")
    result = run_mighty(tmp_path / "home", "eval", "retrieval", str(tmp_path))
    assert result.returncode == 2 and "test.tsv:1" in result.stderr
