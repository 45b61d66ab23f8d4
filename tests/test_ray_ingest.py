"""Ingestion on single-node Ray builds the same collection as one process, bad input and upserts included.

The same JSONL (with a bad line) goes through the CLI's ingest loop twice: in one process into a
one-folder collection, and with chunking and embedding on a two-actor Ray Data pool into a two-shard
collection. Reports, rejections and every retrieval mode must agree; a second run that changes one
document must update exactly that one and skip the rest, and deletes must reach their shard.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import ray

from api.cli.index_commands import ingest
from indexes.collection import Home, ShardedCollection
from indexes.config import CollectionConfig, FusionConfig
from indexes.ray_ingest import RayEmbeddingWriter
from rag.retriever import Retriever
from rag.schemas import RetrievalRequest

QUERIES = ["what is the fahrenheit scale", "causes of left ventricular hypertrophy", "symptoms of flu"]


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _write(path, records, bad_line: bool) -> None:
    lines = [json.dumps({"_id": r["_id"], "text": r["text"], "metadata": {"n": i}}) for i, r in enumerate(records)]
    if bad_line:
        lines.insert(5, '{"_id": "broken", "text": ')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _ingest(home, name: str, shards: int, source, on_ray: bool):
    # both sides fuse with the configured weights: sharded collections do not calibrate (yet), and this
    # test is about what ingestion stores, which bm25 and dense compare on their own
    config = CollectionConfig(name=name, shards=shards, fusion=FusionConfig(calibrate=False))
    collection = Home(home).open_or_create(config)
    return ingest(collection, [str(source)], "reading", "local" if on_ray else None, 2)


def _results(home, name: str, mode: str):
    retriever = Retriever(Home(home).open(name))
    return [[((h.id, h.chunk), h.score) for h in retriever.search(RetrievalRequest(query=q, mode=mode, top_k=8)).hits]
            for q in QUERIES]


@pytest.mark.slow
def test_ray_ingestion_equals_single_process(ray_local, tmp_path, msmarco_records):
    records = msmarco_records[:60]
    source = tmp_path / "batch.jsonl"
    _write(source, records, bad_line=True)
    plain_home, ray_home = tmp_path / "plain", tmp_path / "ray"
    plain, plain_rejected, _ = _ingest(plain_home, "kb", 1, source, on_ray=False)
    on_ray, ray_rejected, _ = _ingest(ray_home, "kb", 2, source, on_ray=True)
    assert isinstance(Home(ray_home).open("kb"), ShardedCollection)
    assert (on_ray.added, on_ray.updated, on_ray.unchanged, on_ray.chunks_written) == \
        (plain.added, plain.updated, plain.unchanged, plain.chunks_written) == (60, 0, 0, plain.chunks_written)
    assert [str(r) for r in ray_rejected] == [str(r) for r in plain_rejected] and len(plain_rejected) == 1
    assert on_ray.generation == 1
    # the actors' embedder fingerprint is recorded, the same one a single process records
    stored = [Home(h).open("kb").snapshot().manifest.embedders for h in (plain_home, ray_home)]
    assert stored[0] == stored[1] and len(stored[0]) == 1 and stored[0][0].fingerprint.startswith("onnx|")
    for mode in ("bm25", "dense", "hybrid"):
        for want, got in zip(_results(plain_home, "kb", mode), _results(ray_home, "kb", mode)):
            assert [key for key, _ in got] == [key for key, _ in want]
            np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)

    changed = [dict(r, text=r["text"] + " Updated with a note on thermometers.") if i == 7 else r
               for i, r in enumerate(records)]
    _write(source, changed, bad_line=False)
    plain, _, _ = _ingest(plain_home, "kb", 1, source, on_ray=False)
    on_ray, _, _ = _ingest(ray_home, "kb", 2, source, on_ray=True)
    assert (on_ray.added, on_ray.updated, on_ray.unchanged) == (plain.added, plain.updated, plain.unchanged) == (0, 1, 59)
    assert on_ray.chunks_written == plain.chunks_written
    for want, got in zip(_results(plain_home, "kb", "hybrid"), _results(ray_home, "kb", "hybrid")):
        assert [key for key, _ in got] == [key for key, _ in want]

    collection = Home(ray_home).open("kb")
    with RayEmbeddingWriter(collection.writer(), collection, ray_home, 2) as writer:
        assert writer.delete(records[3]["_id"]) and not writer.delete("no-such-id")
        writer.commit()
    assert Home(ray_home).open("kb").stats()["documents"] == 59


@pytest.mark.slow
def test_an_unreachable_cluster_is_a_clear_error_and_changes_nothing(tmp_path):
    from tests.helpers import free_port, run_mighty

    source = tmp_path / "in.jsonl"
    source.write_text('{"_id": "a", "text": "Giraffes sleep little."}\n', encoding="utf-8")
    home = tmp_path / "home"
    for address, reason in ((f"127.0.0.1:{free_port()}", "nothing answers"), ("no-port", "HOST:PORT")):
        result = run_mighty(home, "index", "add", str(source), "--collection", "kb", "--ray", address, timeout=120)
        assert result.returncode == 2 and reason in result.stderr and "Traceback" not in result.stderr
    assert not (home / "collections" / "kb").exists()
