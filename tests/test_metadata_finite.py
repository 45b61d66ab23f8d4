"""Issue 9 item 5: NaN / Infinity metadata is refused at ingest, and a stored one never breaks queries."""
from __future__ import annotations

import io
import json
import math

import pytest
from fastapi.testclient import TestClient

import indexes.writer
from api.app import create_app
from api.settings import ServiceSettings
from indexes.collection import Home
from indexes.config import CollectionConfig
from indexes.documents import Rejection, SourceDocument, non_finite_number
from indexes.readers import read_jsonl_lines
from rag.retriever import Retriever
from rag.schemas import RetrievalRequest
from tests.helpers import run_mighty

BAD_LINES = ['{"_id": "n1", "text": "nan doc", "metadata": {"x": NaN}}',
             '{"_id": "n2", "text": "inf doc", "metadata": {"deep": {"list": [1, -Infinity]}}}',
             '{"_id": "n3", "text": "overflow doc", "metadata": {"x": 1e999}}']


def test_finite_check_walks_nested_metadata():
    assert non_finite_number({"a": [1, 2.5, {"b": "NaN"}], "c": None}) is None
    assert "metadata.a[1].b is nan" in non_finite_number({"a": [0, {"b": math.nan}]})
    assert "metadata.x is inf" in non_finite_number({"x": 1e999})


def test_jsonl_reader_rejects_each_bad_line_and_keeps_the_rest():
    text = "\n".join(BAD_LINES[:1] + ['{"_id": "ok", "text": "fine", "metadata": {"x": 1.5}}'] + BAD_LINES[1:]) + "\n"
    results = list(read_jsonl_lines(io.StringIO(text), "m.jsonl", 10_000))
    assert [r.id for r in results if isinstance(r, SourceDocument)] == ["ok"]
    rejected = [str(r) for r in results if isinstance(r, Rejection)]
    assert rejected[0].startswith("m.jsonl:1: document 'n1': metadata.x is nan")
    assert rejected[1].startswith("m.jsonl:3: document 'n2': metadata.deep.list[1] is -inf")
    assert rejected[2].startswith("m.jsonl:4: document 'n3': metadata.x is inf")
    assert all("finite" in r for r in rejected)


def test_writer_refuses_non_finite_metadata(tmp_path):
    collection = Home(tmp_path).create(CollectionConfig(name="w"))
    with collection.writer() as writer, pytest.raises(ValueError, match="metadata.x is nan"):
        writer.upsert(SourceDocument("d", "text", metadata={"x": math.nan}))


@pytest.fixture(scope="module")
def legacy_home(tmp_path_factory):
    """A collection written before ingest refused NaN: the writer's check is switched off for it."""
    root = tmp_path_factory.mktemp("nan-home")
    collection = Home(root).create(CollectionConfig(name="old"))
    patch = pytest.MonkeyPatch()
    patch.setattr(indexes.writer, "non_finite_number", lambda _: None)
    try:
        with collection.writer() as writer:
            writer.upsert(SourceDocument("poisoned", "Otters float on their backs.", "Otters",
                                         {"kind": "animal", "score": math.nan, "deep": {"v": math.inf}}))
            writer.upsert(SourceDocument("clean", "Otters hold hands while sleeping.", "Sleep", {"kind": "animal"}))
            writer.upsert(SourceDocument("other", "Otters of stone in a museum.", "Statues", {"kind": "art"}))
            writer.commit()
    finally:
        patch.undo()
    return root


def test_stored_nan_row_never_breaks_filtered_search(legacy_home):
    retriever = Retriever(Home(legacy_home).open("old"))

    def ids(filters):
        hits = retriever.search(RetrievalRequest(query="otters", mode="bm25", filters=filters)).hits
        return {h.id for h in hits}, hits

    found, hits = ids({"kind": "animal"})
    assert found == {"poisoned", "clean"}  # the bad row still matches on its good fields
    poisoned = next(h for h in hits if h.id == "poisoned")
    assert poisoned.metadata["score"] is None and poisoned.metadata["deep"] == {"v": None}
    json.loads(json.dumps([h.model_dump() for h in hits], allow_nan=False))  # strict JSON
    assert ids({"kind": {"in": ["art"]}})[0] == {"other"}
    assert ids({"score": 1})[0] == set()
    assert ids({"deep.v": 1})[0] == set()
    assert ids(None)[0] == {"poisoned", "clean", "other"}


def test_stored_nan_row_over_rest_and_cli(legacy_home, tmp_path):
    settings = ServiceSettings(home=legacy_home, database_url=f"sqlite:///{tmp_path}/k.db", no_auth=True)
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/retrieve", json={"query": "otters", "collection": "old", "mode": "bm25",
                                                     "filters": {"kind": "animal"}})
        assert response.status_code == 200, response.text
        assert {h["id"] for h in response.json()["hits"]} == {"poisoned", "clean"}
    result = run_mighty(legacy_home, "search", "otters", "-c", "old", "--mode", "bm25", "--json",
                        "--filter", '{"kind": "art"}')
    assert result.returncode == 0, result.stderr
    assert [h["id"] for h in json.loads(result.stdout)["hits"]] == ["other"]


def test_rest_documents_with_nan_are_refused_with_the_reason(tmp_path):
    home = tmp_path / "home"
    Home(home).create(CollectionConfig(name="fresh"))
    settings = ServiceSettings(home=home, database_url=f"sqlite:///{tmp_path}/k.db", no_auth=True)
    with TestClient(create_app(settings)) as client:
        for body in (b'{"documents": [{"_id": "a", "text": "t"}, {"_id": "n", "text": "t", "metadata": {"x": NaN}}]}',
                     b'{"documents": [{"_id": "n", "text": "t", "metadata": {"a": [{"b": Infinity}]}}]}'):
            response = client.post("/v1/collections/fresh/documents", content=body,
                                   headers={"content-type": "application/json"})
            assert response.status_code == 422, response.text
            assert "must be finite" in response.json()["detail"]
        upload = client.post("/v1/collections/fresh/files", files=[
            ("files", ("m.jsonl", ("\n".join(BAD_LINES) + '\n{"_id": "ok", "text": "fine"}\n').encode(), "text/plain"))])
        assert upload.status_code == 202, upload.text
        job = upload.json()
        for _ in range(600):
            job = client.get(f"/v1/jobs/{job['id']}").json()
            if job["status"] in ("succeeded", "failed"):
                break
        assert job["status"] == "succeeded" and job["result"]["added"] == 1
        assert [(r["line"], "finite" in r["reason"]) for r in job["result"]["rejected"]] == [(1, True), (2, True), (3, True)]
    assert Home(home).open("fresh").snapshot().manifest.documents == 1


def test_cli_ingest_names_file_and_line(tmp_path):
    home = tmp_path / "home"
    source = tmp_path / "m.jsonl"
    source.write_text('{"_id": "ok", "text": "fine text"}\n' + "\n".join(BAD_LINES) + "\n", encoding="utf-8")
    result = run_mighty(home, "index", "add", str(source), "--collection", "c")
    assert result.returncode == 1, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "m.jsonl:2: document 'n1': metadata.x is nan" in output and "m.jsonl:4:" in output
    assert "Traceback" not in output
    assert Home(home).open("c").snapshot().manifest.documents == 1
