"""Embedder fingerprints: stable, content-based, cached; stored per segment and per generation,
kept through merges, and absent (unknown) in everything written before they existed."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict

import numpy as np

from indexes import embedder_fingerprint as fp
from indexes.collection import Home
from indexes.config import EmbedderConfig
from indexes.embedder_provenance import EmbedderRun, kept_runs
from indexes.embedders import load_embedder
from indexes.generations import EmbedderShare, Manifest, SegmentRef, current_generation, read_generation
from indexes.onnx_embedder import QUANTIZED_FILE, recipe
from indexes.shards import GlobalStats, ShardedManifest
from tests.fingerprint_helpers import DOCUMENTS, FakeEmbedder, indexed_home


def _files(folder, weights: bytes, tokenizer: bytes = b"{}"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(weights)
    (folder / "tokenizer.json").write_bytes(tokenizer)
    return [folder / "model.onnx", folder / "tokenizer.json"]


def test_fingerprint_is_stable_content_based_and_changes_with_weights_recipe_and_dim(tmp_path):
    files = _files(tmp_path / "a", b"weights-1" * 1000)
    first = fp.fingerprint_of("onnx", "export-opset17", files, 384)
    assert fp.fingerprint_of("onnx", "export-opset17", files, 384) == first
    copy = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "a", copy)  # the same model in another folder: the same embedder
    assert fp.fingerprint_of("onnx", "export-opset17", [copy / "model.onnx", copy / "tokenizer.json"], 384) == first
    other = _files(tmp_path / "b", b"weights-2" * 1000)
    assert fp.fingerprint_of("onnx", "export-opset17", other, 384) != first
    assert fp.fingerprint_of("onnx-int8", "int8-v3", files, 384) != first
    assert fp.fingerprint_of("onnx", "export-opset17", files, 768) != first
    assert fp.fingerprint_of("onnx", "export-opset17", _files(tmp_path / "c", b"weights-1" * 1000, b"[]"), 384) != first
    parsed = fp.Fingerprint.parse(first)
    assert (parsed.backend, parsed.recipe, parsed.dim) == ("onnx", "export-opset17", 384)
    assert str(parsed) == first and parsed.weights.startswith("sha256:")
    assert fp.Fingerprint.parse("not a fingerprint") is None
    changed = fp.describe_change(fp.fingerprint_of("onnx-int8", "int8-v1", files, 384),
                                 fp.fingerprint_of("onnx-int8", "int8-v2", files, 384))
    assert changed == "recipe int8-v1 -> int8-v2"


def test_file_digests_are_computed_once_per_path_size_and_mtime(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"A" * 4096)
    stat = path.stat()
    first = fp.file_digest(path)
    path.write_bytes(b"B" * 4096)  # same size; put the old mtime back: the cache cannot tell
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fp.file_digest(path) == first
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # any real rewrite moves the mtime
    assert fp.file_digest(path) != first


def test_onnx_recipes_and_the_shipped_embedder_fingerprint():
    assert recipe("onnx-int8") == QUANTIZED_FILE.removeprefix("model.").removesuffix(".onnx") == "int8-v2"
    assert recipe("onnx") != recipe("onnx-int8")
    embedder = load_embedder(EmbedderConfig())  # the shipped MiniLM, exported once per test session
    parsed = fp.Fingerprint.parse(embedder.fingerprint)
    assert (parsed.backend, parsed.recipe, parsed.dim) == ("onnx", "export-opset17", 384)
    assert fp.embedder_fingerprint(embedder) == embedder.fingerprint
    assert fp.embedder_fingerprint(object()) is None  # embedders without one write vectors of unknown origin


def test_manifests_round_trip_and_old_ones_load_as_unknown():
    manifest = Manifest(4, [SegmentRef("s", 10, 2)], documents=3, chunks=8,
                        embedders=[EmbedderShare("onnx|r|sha256:ab|384", 6), EmbedderShare(None, 2)])
    assert Manifest.from_json(json.dumps(asdict(manifest))) == manifest
    old = {"generation": 2, "segments": [{"id": "s", "rows": 5, "deleted": 0}], "documents": 2, "chunks": 5,
           "created_at": 1.0, "fusion": None}
    loaded = Manifest.from_json(json.dumps(old))
    assert loaded.embedders == [] and loaded.embedder_shares() == [EmbedderShare(None, 5)]
    assert Manifest.from_json(json.dumps({**old, "chunks": 0})).embedder_shares() == []
    sharded = ShardedManifest(3, [1, 2], embedders=[EmbedderShare("x", 4)])
    assert ShardedManifest.from_json(json.dumps(asdict(sharded))) == sharded
    old_sharded = {k: v for k, v in asdict(ShardedManifest(3, [1, 2], stats=GlobalStats())).items() if k != "embedders"}
    assert ShardedManifest.from_json(json.dumps(old_sharded)).embedders == []
    assert EmbedderRun.from_info({"rows": 7}) == [EmbedderRun(None, 7)]  # a segment.json from before


def test_runs_follow_live_rows():
    runs = [EmbedderRun("a", 3), EmbedderRun(None, 2), EmbedderRun("a", 2)]
    alive = np.array([1, 0, 1, 0, 0, 1, 1], dtype=bool)
    assert kept_runs(runs, alive) == [EmbedderRun("a", 4)]  # the unknown run died; neighbours joined
    assert kept_runs(runs, np.ones(7, bool)) == runs


def test_commits_record_the_embedder_and_merges_keep_each_rows_origin(tmp_path, monkeypatch):
    embedder = FakeEmbedder("fake|v1|sha256:aaaa|32")
    root = indexed_home(tmp_path, monkeypatch, embedder, documents=DOCUMENTS[:4], max_segments=2)
    collection = Home(root).open("c")
    first = collection.snapshot().manifest
    assert first.embedders == [EmbedderShare(embedder.fingerprint, first.chunks)]
    assert collection.snapshot().segments[0].embedder_runs == [EmbedderRun(embedder.fingerprint, first.chunks)]
    with collection.writer() as writer:  # vectors supplied by the caller: of unknown origin
        for document in DOCUMENTS[4:6]:
            writer.upsert(document, embedder.encode([c.text for c in collection.chunker.split(document)]))
        writer.commit()
    with collection.writer() as writer:  # a third segment: more than max_segments, so they merge
        for document in DOCUMENTS[6:8]:
            writer.upsert(document)
        writer.delete("d0")
        writer.commit()
    snapshot = Home(root).open("c").snapshot()
    assert len(snapshot.segments) == 1
    runs = snapshot.segments[0].embedder_runs
    assert [r.fingerprint for r in runs] == [embedder.fingerprint, None, embedder.fingerprint]
    assert sum(r.rows for r in runs) == snapshot.segments[0].rows == snapshot.manifest.chunks
    shares = {s.fingerprint: s.chunks for s in snapshot.manifest.embedders}
    assert shares == {embedder.fingerprint: runs[0].rows + runs[2].rows, None: runs[1].rows}
    stored, _ = read_generation(collection.folder, current_generation(collection.folder))
    assert stored.embedders == snapshot.manifest.embedders  # what the manifest on disk says
