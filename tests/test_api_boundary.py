"""Issue 9 regressions at the REST boundary, in-process: no 5xx from bad bodies, names or models."""
from __future__ import annotations

import json
import tempfile
import time

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.error_handlers import SafeJSONResponse
from api.settings import ServiceSettings

DOCS = "/v1/collections/demo/documents"


@pytest.fixture
def client(writable_demo_home, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # upload folders land here, where we look
    (tmp_path / "tmp").mkdir()
    settings = ServiceSettings(home=writable_demo_home, database_url=f"sqlite:///{tmp_path}/k.db", no_auth=True,
                               max_body_bytes=20 * 1024 * 1024)
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        test_client.upload_tmp = tmp_path / "tmp"
        yield test_client


def _finished(client: TestClient, job: dict, headers: dict | None = None) -> dict:
    for _ in range(600):
        job = client.get(f"/v1/jobs/{job['id']}", headers=headers or {}).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job['id']} did not finish")


def test_lone_surrogates_in_any_json_body_are_422(client):
    for body in (b'{"query": "\\ud800", "collection": "demo"}', b'{"nope": "\\udfff"}',
                 b'{"query": "\xed\xa0\x80", "collection": "demo"}'):
        response = client.post("/v1/retrieve", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422 and "lone surrogate" in response.json()["detail"], body
    paired = client.post("/v1/retrieve", content=b'{"query": "otter \\ud83e\\udda6", "collection": "demo"}',
                         headers={"content-type": "application/json"})
    assert paired.status_code == 200


def test_error_bodies_cannot_fail_to_encode():
    body = SafeJSONResponse({"detail": "bad \ud800 input"}).body
    assert json.loads(body) == {"detail": "bad \ud800 input"}


def test_documents_follow_the_cli_rules(client):
    cases = [([{"_id": "w", "text": " \n "}], "no 'text'"), ([{"_id": "  ", "text": "x"}], "missing document id"),
             ([{"_id": "d", "text": "a"}, {"_id": "d", "text": "b"}], "duplicate _id 'd' (first at documents[0])"),
             ([{"_id": "big", "text": "word " * 2_200_000}], "is 10.5 MiB, over the 10 MiB document limit")]
    before = client.get("/v1/collections/demo").json()["documents"]
    for documents, reason in cases:
        response = client.post(DOCS, json={"documents": documents})
        assert response.status_code == 422, documents[0]["_id"]
        assert reason in json.dumps(response.json()["detail"]["rejected"]), response.text
    assert client.get("/v1/collections/demo").json()["documents"] == before  # nothing stored


def test_ids_with_newlines_can_be_deleted(client):
    job = client.post(DOCS, json={"documents": [{"_id": "two\nlines", "text": "Lemurs live on Madagascar."}]})
    assert _finished(client, job.json())["status"] == "succeeded"
    deleted = client.delete(DOCS, params={"id": "two\nlines"})
    assert deleted.status_code == 200 and deleted.json() == {"deleted": "two\nlines"}
    assert client.delete(DOCS, params={"id": "two\nlines"}).status_code == 404


def test_upload_names_are_base_names_and_folders_never_remain(client, monkeypatch):
    files = [("files", ("../../escape.md", b"# Escape\n\nWalruses climb ice with tusks.\n"))]
    job = client.post("/v1/collections/demo/files", files=files)
    assert job.status_code == 202 and _finished(client, job.json())["result"]["added"] == 1
    for name in ("..", ".", "a/.."):
        refused = client.post("/v1/collections/demo/files", files=[("files", (name, b"hello"))])
        assert refused.status_code == 422 and "not a usable file name" in refused.json()["detail"], name
    twice = client.post("/v1/collections/demo/files", files=[("files", ("a.md", b"# A\n\none\n")),
                                                             ("files", ("a.md", b"# A\n\ntwo\n"))])
    assert twice.status_code == 422 and "two uploaded files are named 'a.md'" in twice.json()["detail"]
    import api.ingest

    def explode(*_, **__):
        raise RuntimeError("reader crashed at /srv/secret/path")

    monkeypatch.setattr(api.ingest, "read_paths", explode)
    crashed = client.post("/v1/collections/demo/files", files=[("files", ("c.md", b"# C\n\nc\n"))])
    assert crashed.status_code == 500 and "secret" not in crashed.text and "Traceback" not in crashed.text
    assert not list(client.upload_tmp.glob("mighty-upload-*"))


def test_bodies_over_the_limit_are_413_even_chunked(writable_demo_home, tmp_path):
    settings = ServiceSettings(home=writable_demo_home, database_url=f"sqlite:///{tmp_path}/k.db", no_auth=True,
                               max_body_bytes=4096)
    body = json.dumps({"documents": [{"_id": "x", "text": "y" * 8000}]}).encode()
    multipart = (b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.md"\r\n\r\n' + b"y" * 8000
                 + b"\r\n--b--\r\n")
    with TestClient(create_app(settings)) as client:
        chunked = client.post(DOCS, content=iter([body[:3000], body[3000:]]), headers={"content-type": "application/json"})
        assert chunked.status_code == 413 and chunked.json()["detail"] == "request body is over the 4 KiB limit"
        upload = client.post("/v1/collections/demo/files", content=iter([multipart[:3000], multipart[3000:]]),
                             headers={"content-type": "multipart/form-data; boundary=b"})
        assert upload.status_code == 413


def test_unknown_llm_provider_is_422_naming_the_model(client):
    for path, body in (("/v1/query", {"query": "otters", "collection": "demo", "llm": "nonexistent-provider/x"}),
                       ("/v1/chat/completions", {"model": "nonexistent-provider/x",
                                                 "messages": [{"role": "user", "content": "hi"}]})):
        response = client.post(path, json=body)
        assert response.status_code == 422 and "nonexistent-provider/x" in response.json()["detail"], path


def test_jobs_are_visible_only_to_their_key_and_admins(writable_demo_home, tmp_path):
    from api.db import make_sessions, open_database
    from api.keys import KeyStore

    settings = ServiceSettings(home=writable_demo_home, database_url=f"sqlite:///{tmp_path}/k.db")
    store = KeyStore(make_sessions(open_database(settings.resolved_database_url())))
    keys = {name: {"Authorization": f"Bearer {store.create(name, role)[0]}"}
            for name, role in (("root", "admin"), ("alpha", "team:alpha"), ("alpha2", "team:alpha"),
                               ("viewer", "reader"))}
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/collections", json={"name": "alpha-notes"}, headers=keys["alpha"]).status_code == 201
        job = client.post("/v1/collections/alpha-notes/documents", headers=keys["alpha"],
                          json={"documents": [{"_id": "n", "text": "Team notes about kelp forests."}]}).json()
        assert _finished(client, job, keys["alpha"])["status"] == "succeeded"
        for other in ("alpha2", "viewer"):  # same team, other key; a reader: the job does not exist for them
            assert client.get(f"/v1/jobs/{job['id']}", headers=keys[other]).status_code == 404
        assert client.get(f"/v1/jobs/{job['id']}", headers=keys["root"]).status_code == 200
