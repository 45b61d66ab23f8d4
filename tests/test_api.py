"""The REST service end to end, on a real `mighty serve` process bound to a free loopback port."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time

import httpx
import pytest

from tests.helpers import REPO, free_port, run_mighty, start_server


@pytest.fixture(scope="module")
def server(demo_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("api") / "home"
    shutil.copytree(demo_home, home)
    keys = {}
    for name, role in (("root", "admin"), ("alpha", "team:alpha"), ("viewer", "reader")):
        created = run_mighty(home, "keys", "create", name, "--role", role)
        assert created.returncode == 0, created.stderr
        keys[role] = created.stdout.strip()
    port = free_port()
    env = {**os.environ, "MIGHTY_HOME": str(home), "HF_HUB_OFFLINE": "1", "MIGHTY_ANSWER_TOKENS": "48"}
    process = start_server(["serve", "--port", str(port), "--auth"], port, env, home.parent / "server.log", 240)
    base = f"http://127.0.0.1:{port}"
    yield {"base": base, "keys": keys, "home": home}
    process.terminate()
    process.wait(timeout=30)


def _client(server, role: str | None = "admin") -> httpx.Client:
    headers = {"Authorization": f"Bearer {server['keys'][role]}"} if role else {}
    return httpx.Client(base_url=server["base"], headers=headers, timeout=300)


def _wait_for_job(client: httpx.Client, job: dict) -> dict:
    for _ in range(600):
        job = client.get(f"/v1/jobs/{job['id']}").json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job['id']} did not finish")


def test_auth_rules(server):
    body = {"query": "crash safety", "collection": "demo"}
    assert _client(server, None).post("/v1/retrieve", json=body).status_code == 401
    bad = httpx.post(f"{server['base']}/v1/retrieve", json=body, headers={"Authorization": "Bearer mty_wrong"})
    assert bad.status_code == 401 and "invalid" in bad.json()["detail"]
    with _client(server, "reader") as reader:
        assert reader.post("/v1/retrieve", json=body).status_code == 200
        assert reader.post("/v1/collections", json={"name": "r"}).status_code == 403
    with _client(server, "team:alpha") as team:
        created = team.post("/v1/collections", json={"name": "alpha-notes"})
        assert created.status_code == 201 and created.json()["owner"] == "alpha"
        refused = team.post("/v1/collections/demo/documents", json={"documents": [{"_id": "x", "text": "t"}]})
        assert refused.status_code == 403 and "cannot change collection 'demo'" in refused.json()["detail"]
        assert team.delete("/v1/collections/demo").status_code == 403
        assert team.delete("/v1/collections/alpha-notes").status_code == 200
    assert _client(server, None).get("/healthz").status_code == 200


def test_index_over_http_then_retrieve_and_delete(server):
    with _client(server) as admin:
        assert admin.post("/v1/collections", json={"name": "animals"}).status_code == 201
        assert admin.post("/v1/collections", json={"name": "animals"}).status_code == 409
        job = admin.post("/v1/collections/animals/documents", json={"documents": [
            {"_id": "otter", "title": "Otters", "text": "Sea otters hold hands while they sleep.", "metadata": {"kind": "mammal"}},
            {"_id": "octopus", "title": "Octopus", "text": "An octopus has three hearts and blue blood."}]})
        assert job.status_code == 202
        assert _wait_for_job(admin, job.json())["result"]["added"] == 2
        files = [("files", ("bees.md", b"# Bees\n\nHoney bees dance to tell the hive where flowers are.\n", "text/markdown")),
                 ("files", ("broken.jsonl", b'{"_id": "a", "text": "fine"}\n{oops\n', "application/json"))]
        upload = _wait_for_job(admin, admin.post("/v1/collections/animals/files", files=files).json())
        assert upload["status"] == "succeeded" and upload["result"]["added"] == 2
        assert upload["result"]["rejected"] == [{"source": "broken.jsonl", "line": 2, "reason": upload["result"]["rejected"][0]["reason"]}]
        hits = admin.post("/v1/retrieve", json={"query": "how many hearts does an octopus have",
                                                 "collection": "animals", "top_k": 3}).json()["hits"]
        assert hits[0]["id"] == "octopus" and hits[0]["found_by"]["bm25"]["rank"] == 1
        only = admin.post("/v1/retrieve", json={"query": "animals", "collection": "animals",
                                                 "filters": {"kind": "mammal"}}).json()["hits"]
        assert [h["id"] for h in only] == ["otter"]
        assert admin.delete("/v1/collections/animals/documents/octopus").status_code == 200
        assert admin.delete("/v1/collections/animals/documents/octopus").status_code == 404
        hits = admin.post("/v1/retrieve", json={"query": "octopus hearts", "collection": "animals"}).json()["hits"]
        assert "octopus" not in {h["id"] for h in hits}


def test_bad_requests_get_clear_4xx(server):
    with _client(server) as admin:
        too_long = admin.post("/v1/query", json={"query": "x" * 5000, "collection": "demo"})
        assert too_long.status_code == 422 and "limit is 4096" in too_long.text
        big_k = admin.post("/v1/retrieve", json={"query": "x", "collection": "demo", "top_k": 500})
        assert big_k.status_code == 422 and "at most 100" in big_k.text
        assert admin.post("/v1/retrieve", json={"query": "", "collection": "demo"}).status_code == 422
        assert admin.post("/v1/retrieve", json={"query": "x", "collection": "missing"}).status_code == 404
        bad_filter = admin.post("/v1/retrieve", json={"query": "x", "collection": "demo", "filters": {"a": {"gt": 1}}})
        assert bad_filter.status_code == 422
        huge = admin.post("/v1/collections/demo/documents", content=b"{" + b" " * (21 * 1024 * 1024) + b"}",
                          headers={"content-type": "application/json"})
        assert huge.status_code == 413 and "over the 20 MiB limit" in huge.json()["detail"]
        assert admin.get("/v1/jobs/nope").status_code == 404


def _cited_ids_exist(server, answer: str, citations: list[dict]):
    assert citations, "an answer must cite at least one source"
    markers = {int(n) for n in re.findall(r"\[(\d+)\]", answer)}
    for citation in citations:
        assert citation["number"] in markers
        path = (REPO / "data" / citation["id"])
        assert path.exists(), citation["id"]
        text = path.read_text(encoding="utf-8")
        assert text[citation["span"][0]:citation["span"][1]] == citation["text"]


def test_query_returns_a_cited_answer(server):
    with _client(server, "reader") as reader:
        response = reader.post("/v1/query", json={"query": "What happens to readers when a writer crashes?",
                                                  "collection": "demo", "top_k": 4})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answer"].strip() and body["model"]
    _cited_ids_exist(server, body["answer"], body["citations"])
    assert {"retrieve", "assemble", "llm", "citations", "total"} <= set(body["timings"])


def test_query_streams_tokens_then_citations(server):
    events = []
    with _client(server, "reader") as reader, reader.stream(
            "POST", "/v1/query", json={"query": "How is BM25 scored?", "collection": "demo", "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[6:])))
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "token" and kinds[-2:] == ["citations", "done"]
    final = events[-2][1]
    streamed = "".join(data["text"] for kind, data in events if kind == "token")
    assert streamed.strip()
    _cited_ids_exist(server, final["answer"], final["citations"])


def test_openai_client_against_chat_completions(server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server['base']}/v1", api_key=server["keys"]["reader"])
    assert "rag:demo" in {m.id for m in client.models.list()}
    completion = client.chat.completions.create(
        model="rag:demo", messages=[{"role": "user", "content": "How does hybrid fusion weigh the retrievers?"}],
        max_tokens=40)
    message = completion.choices[0].message
    citations = message.model_extra["citations"]
    _cited_ids_exist(server, message.content, citations)
    chunks = list(client.chat.completions.create(
        model="rag:demo", messages=[{"role": "user", "content": "How does hybrid fusion weigh the retrievers?"}],
        max_tokens=40, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed.strip()
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].model_extra["citations"]
    plain = client.chat.completions.create(model="local/smollm2-135m-instruct", max_tokens=8,
                                           messages=[{"role": "user", "content": "Say hello."}])
    assert plain.choices[0].message.content.strip() and plain.usage.completion_tokens > 0


def test_litellm_path_over_a_real_http_hop(server):
    """The pipeline's 'hosted' LLM is this server's own chat endpoint, reached through LiteLLM."""
    with _client(server) as admin:
        response = admin.post("/v1/query", json={
            "query": "Which file points readers at the committed generation?", "collection": "demo",
            "llm": "openai/local/smollm2-135m-instruct", "api_base": f"{server['base']}/v1",
            "api_key": server["keys"]["reader"], "max_tokens": 40})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["answer"].strip()
        _cited_ids_exist(server, body["answer"], body["citations"])
    with _client(server, "reader") as reader:
        refused = reader.post("/v1/query", json={"query": "x", "collection": "demo", "api_base": "http://127.0.0.1:9"})
        assert refused.status_code == 403


def test_model_timeout_answers_504_naming_the_stage(server):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never answers
    try:
        with _client(server) as admin:
            response = admin.post("/v1/query", json={
                "query": "anything", "collection": "demo", "llm": "openai/never", "timeout_s": 2,
                "api_base": f"http://127.0.0.1:{silent.getsockname()[1]}/v1", "api_key": "unused"})
        assert response.status_code == 504
        assert response.json()["detail"]["stage"] == "llm"
    finally:
        silent.close()


def test_metrics_count_routes_and_stages(server):
    text = httpx.get(f"{server['base']}/metrics").text
    assert 'mighty_requests_total{method="POST",route="/v1/retrieve",status="200"}' in text
    assert 'mighty_stage_seconds_count{stage="retrieve"}' in text


def test_revoked_key_is_refused_and_docs_are_served(server):
    created = run_mighty(server["home"], "keys", "create", "temp", "--role", "reader")
    token = created.stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{server['base']}/v1/collections", headers=headers).status_code == 200
    listed = run_mighty(server["home"], "keys", "list")
    key_id = next(line.split()[1] for line in listed.stdout.splitlines() if " temp " in line)
    assert run_mighty(server["home"], "keys", "revoke", key_id).returncode == 0
    assert httpx.get(f"{server['base']}/v1/collections", headers=headers).status_code == 401
    assert run_mighty(server["home"], "keys", "revoke", key_id).returncode == 1
    assert run_mighty(server["home"], "keys", "create", "x", "--role", "superuser").returncode == 2
    spec = httpx.get(f"{server['base']}/openapi.json").json()
    assert {"/v1/query", "/v1/retrieve", "/v1/chat/completions"} <= set(spec["paths"])
    assert httpx.get(f"{server['base']}/docs").status_code == 200
