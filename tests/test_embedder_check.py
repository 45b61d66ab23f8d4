"""Stored vectors against the current embedder: ingest refuses to mix embedders, queries measure
agreement (serve when it holds, refuse dense/hybrid when not, BM25 always), `reembed` repairs."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from api.cli.context import EXIT_EMBEDDER_CHANGED
from api.cli.main import app as cli
from api.settings import ServiceSettings
from indexes.collection import Home
from indexes.documents import SourceDocument
from indexes.embedder_check import AGREEMENT_THRESHOLD, EmbedderChanged, EmbedderIncompatible
from indexes.embedder_allowlist import EmbedderNotAllowed
from indexes.generations import EmbedderShare, list_generations, read_generation
from rag.retriever import Retriever
from rag.schemas import RetrievalRequest
from tests.fingerprint_helpers import DOCUMENTS, FakeEmbedder, generated_documents, indexed_home, use_embedder

OLD = "fake|v1|sha256:aaaa|32"
NEW = "fake|v2|sha256:bbbb|32"
QUERY = "which process writes a collection under an exclusive lock"


def _search(root, mode: str):
    return Retriever(Home(root).open("c")).search(RetrievalRequest(query=QUERY, mode=mode, top_k=5))


@pytest.fixture
def old_home(tmp_path, monkeypatch):
    return indexed_home(tmp_path / "home", monkeypatch, FakeEmbedder(OLD))


def test_ingest_refuses_vectors_from_another_embedder_and_names_the_fix(old_home, monkeypatch):
    use_embedder(monkeypatch, FakeEmbedder(NEW, salt="b"))
    collection = Home(old_home).open("c")
    generation = collection.snapshot().generation
    with pytest.raises(EmbedderChanged, match=r"recipe v1 -> v2.*mighty index reembed c"):
        collection.check_ingest()
    with collection.writer() as writer, pytest.raises(EmbedderChanged):
        writer.upsert(SourceDocument("new", "a brand new document about locks"))
    with collection.writer() as writer:  # deleting never embeds: still allowed
        assert writer.delete("d1")
        writer.commit()
    assert collection.snapshot().generation == generation + 1
    # the same embedder again (a new process, same files): no refusal
    use_embedder(monkeypatch, FakeEmbedder(OLD))
    reopened = Home(old_home).open("c")
    reopened.check_ingest()
    with reopened.writer() as writer:
        writer.upsert(SourceDocument("new", "a brand new document about locks"))
        writer.commit()


def test_supplied_vectors_are_checked_by_the_fingerprint_that_comes_with_them(old_home, monkeypatch):
    # what Ray ingest does: actors embed, the writer stores their vectors with the actors' fingerprint
    collection = Home(old_home).open("c")
    document = SourceDocument("new", "a brand new document about locks")
    vectors = FakeEmbedder(NEW, salt="b").encode([c.text for c in collection.chunker.split(document)])
    with collection.writer() as writer, pytest.raises(EmbedderChanged):
        writer.upsert(document, vectors, fingerprint=NEW)
    with collection.writer() as writer:
        writer.upsert(document, vectors, fingerprint=OLD)
        manifest = writer.commit()
    assert manifest.embedders == [EmbedderShare(OLD, manifest.chunks)]


def test_a_changed_but_agreeing_embedder_serves_and_is_measured_once(old_home, monkeypatch):
    requantised = FakeEmbedder(NEW, noise=0.02)  # the same term vectors, perturbed (cos ~0.99)
    use_embedder(monkeypatch, requantised)
    collection = Home(old_home).open("c")
    retriever = Retriever(collection)
    hits = retriever.search(RetrievalRequest(query=QUERY, mode="dense", top_k=3)).hits
    assert hits and hits[0].id == "d1"
    measured = requantised.passages
    assert measured == 8  # one seeded sample of stored chunks, re-embedded
    for mode in ("hybrid", "dense", "hybrid"):
        retriever.search(RetrievalRequest(query=QUERY, mode=mode, top_k=3))
    assert requantised.passages == measured  # no measurement per query
    stats = collection.stats(check_embedder=True)
    assert stats["embedder_current"] == NEW
    assert stats["embedder_fingerprints"] == [{"fingerprint": OLD, "chunks": stats["chunks"]}]
    check = stats["embedder_check"]
    assert check.startswith("embedder changed since indexing (recipe v1 -> v2, weights sha256:aaaa -> sha256:bbbb)")
    cosine = float(check.split("cos ")[1].rstrip(")"))
    assert AGREEMENT_THRESHOLD <= cosine < 1.0
    assert requantised.passages == measured  # stats reuse the process's verdict


def test_ingest_with_a_changed_but_agreeing_embedder_adds_rows_under_its_fingerprint(old_home, monkeypatch):
    requantised = FakeEmbedder(NEW, noise=0.02)  # cos ~0.99 with the stored vectors: comparable
    use_embedder(monkeypatch, requantised)
    collection = Home(old_home).open("c")
    collection.check_ingest()  # measured, not refused
    assert requantised.passages == 8
    with collection.writer() as writer:
        writer.upsert(SourceDocument("new", "a brand new document about locks"))
        manifest = writer.commit()
    assert sorted(manifest.embedders, key=lambda s: s.fingerprint) == [
        EmbedderShare(OLD, len(DOCUMENTS)), EmbedderShare(NEW, manifest.chunks - len(DOCUMENTS))]
    assert requantised.passages == 8 + manifest.chunks - len(DOCUMENTS)  # one measurement, then embedding
    assert _search(old_home, "hybrid").hits[0].id == "d1"  # both fingerprints' rows serve


def test_a_disagreeing_embedder_refuses_dense_and_hybrid_while_bm25_serves(old_home, monkeypatch):
    use_embedder(monkeypatch, FakeEmbedder(NEW, salt="b"))  # another model behind the same name
    for mode in ("dense", "hybrid"):
        with pytest.raises(EmbedderIncompatible, match=r"vectors disagree .*mighty index reembed c"):
            _search(old_home, mode)
    assert _search(old_home, "bm25").hits[0].id == "d1"
    stats = Home(old_home).open("c").stats(check_embedder=True)
    assert "vectors disagree" in stats["embedder_check"]
    assert "embedder_check" not in Home(old_home).open("c").stats()  # plain stats never load a model


def test_reembed_restores_dense_search_keeps_bm25_and_text_and_recalibrates(tmp_path, monkeypatch):
    root = indexed_home(tmp_path / "home", monkeypatch, FakeEmbedder(OLD), calibrate=True,
                        documents=DOCUMENTS + generated_documents(60))
    before = Home(root).open("c")
    with before.writer() as writer:  # a tombstone: deleted rows are not carried into the re-embedded generation
        assert writer.delete("d11")
        writer.commit()
    old_generation = before.snapshot().generation
    bm25_before = _search(root, "bm25")
    text_before = {(c.doc_id, c.chunk_index): c.text for s in before.snapshot().segments for c in s.store.all_chunks()}
    new = FakeEmbedder(NEW, salt="b")
    use_embedder(monkeypatch, new)
    with pytest.raises(EmbedderIncompatible):
        _search(root, "hybrid")
    collection = Home(root).open("c")
    with collection.writer() as writer:
        manifest = writer.reembed()
    assert sum(ref.deleted for ref in manifest.segments) == 0
    assert manifest.generation > old_generation and old_generation in list_generations(collection.folder)
    old_manifest, old_deletes = read_generation(collection.folder, old_generation)  # still complete and readable
    assert old_deletes
    assert old_manifest.embedders == [EmbedderShare(OLD, old_manifest.chunks)]
    assert manifest.embedders == [EmbedderShare(NEW, manifest.chunks)]
    assert old_manifest.fusion is not None and old_manifest.fusion["calibrated_generation"] < manifest.generation
    assert manifest.fusion is not None and manifest.fusion["calibrated_generation"] == manifest.generation
    assert new.passages >= manifest.chunks
    hits = _search(root, "dense").hits
    assert hits[0].id == "d1"
    assert _search(root, "hybrid").hits[0].id == "d1"
    bm25_after = _search(root, "bm25")
    assert [(h.id, h.chunk, round(h.found_by["bm25"].score, 5)) for h in bm25_after.hits] == \
           [(h.id, h.chunk, round(h.found_by["bm25"].score, 5)) for h in bm25_before.hits]
    snapshot = Home(root).open("c").snapshot()
    text_after = {(c.doc_id, c.chunk_index): c.text for s in snapshot.segments for c in s.store.all_chunks()}
    assert text_after == {k: v for k, v in text_before.items() if k[0] != "d11"}
    Home(root).open("c").check_ingest()  # adding documents works again


def test_sharded_collections_refuse_and_reembed_as_one(tmp_path, monkeypatch):
    root = indexed_home(tmp_path / "home", monkeypatch, FakeEmbedder(OLD), shards=2)
    use_embedder(monkeypatch, FakeEmbedder(NEW, salt="b"))
    collection = Home(root).open("c")
    assert collection.stats()["embedder_fingerprints"] == [{"fingerprint": OLD, "chunks": collection.stats()["chunks"]}]
    with pytest.raises(EmbedderChanged):
        collection.check_ingest()
    with pytest.raises(EmbedderIncompatible):
        _search(root, "dense")
    with collection.writer() as writer:
        sharded = writer.reembed()
    assert sharded.embedders == [EmbedderShare(NEW, sharded.chunks)]
    assert _search(root, "dense").hits[0].id == "d1"


def test_cli_exit_codes_stats_and_reembed(old_home, monkeypatch, tmp_path):
    use_embedder(monkeypatch, FakeEmbedder(NEW, salt="b"))
    runner = CliRunner()
    source = tmp_path / "more.jsonl"
    source.write_text('{"_id": "x", "text": "another document"}\n', encoding="utf-8")
    home = ["--home", str(old_home)]
    added = runner.invoke(cli, [*home, "index", "add", str(source), "--collection", "c"])
    assert added.exit_code == EXIT_EMBEDDER_CHANGED, added.output
    assert "mighty index reembed c" in added.output
    searched = runner.invoke(cli, [*home, "search", QUERY, "--collection", "c", "--mode", "hybrid"])
    assert searched.exit_code == EXIT_EMBEDDER_CHANGED and "reembed" in searched.output
    assert runner.invoke(cli, [*home, "search", QUERY, "--collection", "c", "--mode", "bm25"]).exit_code == 0
    stats = runner.invoke(cli, [*home, "index", "stats", "c"], env={"COLUMNS": "400"})
    assert stats.exit_code == 0 and f"{OLD} (12 chunks)" in stats.output and "vectors disagree" in stats.output
    fixed = runner.invoke(cli, [*home, "index", "reembed", "c"])
    assert fixed.exit_code == 0 and NEW in fixed.output, fixed.output
    assert runner.invoke(cli, [*home, "index", "add", str(source), "--collection", "c"]).exit_code == 0
    assert runner.invoke(cli, [*home, "search", QUERY, "--collection", "c"]).exit_code == 0
    bad = runner.invoke(cli, [*home, "index", "reembed", "../etc"])  # names are validated as everywhere
    assert bad.exit_code != 0 and "collection" in bad.output


def test_rest_answers_409_with_a_reason_and_bm25_still_serves(old_home, monkeypatch, tmp_path):
    use_embedder(monkeypatch, FakeEmbedder(NEW, salt="b"))
    settings = ServiceSettings(home=old_home, database_url=f"sqlite:///{tmp_path}/k.db", no_auth=True)
    with TestClient(create_app(settings)) as client:
        added = client.post("/v1/collections/c/documents", json={"documents": [{"_id": "x", "text": "more"}]})
        assert added.status_code == 409 and added.json()["reason"] == "embedder_changed"
        assert "mighty index reembed c" in added.json()["detail"]
        body = {"query": QUERY, "collection": "c"}
        refused = client.post("/v1/retrieve", json=body)
        assert refused.status_code == 409 and "vectors disagree" in refused.json()["detail"]
        served = client.post("/v1/retrieve", json={**body, "mode": "bm25"})
        assert served.status_code == 200 and served.json()["hits"][0]["id"] == "d1"
        stats = client.get("/v1/collections/c").json()  # the server has loaded the embedder: it says why
        assert stats["embedder_fingerprints"][0]["fingerprint"] == OLD and "vectors disagree" in stats["embedder_check"]
        health = client.get("/healthz").json()  # warm-up met the refusal: a warning, not an unhealthy collection
        assert health["status"] == "ok" and health["unhealthy"] == {}


def test_embedder_names_are_still_checked(tmp_path):
    from indexes.config import CollectionConfig, EmbedderConfig

    with pytest.raises(EmbedderNotAllowed, match="not allowed"):
        Home(tmp_path).create(CollectionConfig(name="c", embedder=EmbedderConfig(model="/etc/passwd")))


def test_real_recipe_change_fp32_to_int8_is_measured_compatible(writable_demo_home):
    """The shipped MiniLM, indexed with the fp32 ONNX export, then queried through its int8 variant
    (what a new quantisation recipe under the same name amounts to): fingerprints differ, the measured
    vectors agree, so queries serve, stats say so, and new documents join under the new fingerprint."""
    home = Home(writable_demo_home)
    stored = home.open("demo").stats()["embedder_fingerprints"]
    assert len(stored) == 1 and stored[0]["fingerprint"].startswith("onnx|export-opset17|sha256:")
    config = home.open("demo").config.embedder
    home.update_config("demo", embedder={**config.model_dump(), "backend": "onnx-int8"})
    collection = Home(writable_demo_home).open("demo")
    stats = collection.stats(check_embedder=True)
    assert stats["embedder_current"].startswith("onnx-int8|int8-v2|sha256:")
    assert stats["embedder_check"].startswith("embedder changed since indexing (backend onnx -> onnx-int8, recipe "
                                              "export-opset17 -> int8-v2, weights sha256:")
    assert "vectors agree (cos 0.99" in stats["embedder_check"]
    result = Retriever(collection).search(RetrievalRequest(query="How does Mighty survive a crash?", top_k=3))
    assert result.hits
    collection.check_ingest()  # measured to agree: not refused
    with collection.writer() as writer:
        writer.upsert(SourceDocument("int8-note", "Quantised encoders keep vectors within a cosine of 0.99."))
        manifest = writer.commit()
    assert {share.fingerprint.split("|")[0] for share in manifest.embedders} == {"onnx", "onnx-int8"}


@pytest.mark.parametrize("failpoint", ["before-publish:segments", "before-replace:CURRENT"])
def test_a_killed_reembed_leaves_the_old_generation_serving(writable_demo_home, failpoint):
    """`mighty index reembed` killed while writing segments, or with everything written but CURRENT not
    yet replaced: searches still answer from the old generation, and the next run completes."""
    import signal

    from tests.helpers import run_mighty

    def answers():
        collection = Home(writable_demo_home).open("demo")
        hits = Retriever(collection).search(RetrievalRequest(query="How are generations committed?", top_k=5)).hits
        return collection.snapshot().generation, [(h.id, h.chunk, round(h.score, 6)) for h in hits]

    before = answers()
    killed = run_mighty(writable_demo_home, "index", "reembed", "demo", env={"MIGHTY_FAILPOINT": failpoint})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert answers() == before
    done = run_mighty(writable_demo_home, "index", "reembed", "demo")
    assert done.returncode == 0 and "chunks re-embedded with onnx|" in done.stdout, done.stderr
    generation, hits = answers()
    assert generation > before[0] and [h[:2] for h in hits] == [h[:2] for h in before[1]]  # same embedder: same ranking
