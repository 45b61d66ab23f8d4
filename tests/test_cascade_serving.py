"""Every cascade policy through a real `mighty serve`: OpenAI-compatible chat (whole and streamed),
/v1/query, the collection default, the 422s, and the escalation counter on /metrics.

Both sides are SmolLM2 (the second under another name), so escalation is decided by the policy,
which is what is under test: faithfulness escalates an answer the sources do not support (an
off-corpus question SmolLM2 answers from its own memory) and keeps one copied from the sources; a
router trained on a crafted results file escalates the kind of question the small model got wrong.
"""
from __future__ import annotations

import json

import httpx
import pytest

from tests.cascade_helpers import LARGE, SMALL, cascade, router_records, twin_env
from tests.helpers import free_port, run_mighty, start_server

ON_CORPUS = "What is the default chunk size?"
OFF_CORPUS = "What is the capital of France?"


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_home):
    import os
    import shutil

    root = tmp_path_factory.mktemp("cascade-serve")
    home = root / "home"
    shutil.copytree(demo_home, home)
    trained = run_mighty(home, "cascade", "train-router", str(router_records(root / "records.jsonl")), "-c", "demo")
    assert trained.returncode == 0, trained.stderr
    port = free_port()
    env = {**os.environ, "MIGHTY_HOME": str(home), "HF_HUB_OFFLINE": "1", "MIGHTY_LLM_TIMEOUT_S": "300",
           "MIGHTY_RETRIEVAL_TIMEOUT_S": "60", **twin_env()}
    process = start_server(["serve", "--port", str(port), "--no-auth"], port, env, root / "server.log", 300)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def _chat(base: str, question: str, llm: str, stream: bool = False) -> dict:
    body = {"model": "rag:demo", "llm": llm, "messages": [{"role": "user", "content": question}],
            "stream": stream, "cards": "none"}
    if not stream:
        response = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=900)
        assert response.status_code == 200, response.text
        return response.json()
    text, last = "", None
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=900) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                assert "error" not in event, event
                text += event["choices"][0]["delta"].get("content", "")
                last = event
    return {"content": text, **last}


def _roles(report: dict) -> list[str]:
    return [stage["role"] for stage in report["stages"]]


def test_router_escalates_the_kind_of_question_the_small_model_got_wrong(server):
    kept = _chat(server, "How large are the chunks documents are split into?", cascade("router", 0.5))["cascade"]
    sent = _chat(server, "What is the largest ocean on Earth?", cascade("router", 0.5))["cascade"]
    assert kept["policy"] == "router" and kept["threshold"] == 0.5
    assert not kept["escalated"] and kept["answered_by"] == SMALL and kept["confidence"] >= 0.5
    assert sent["escalated"] and sent["answered_by"] == LARGE and sent["confidence"] < 0.5
    assert _roles(sent) == ["router", "large"]  # no small-model call when the router escalates
    assert all(stage["latency_ms"] > 0 for stage in sent["stages"])


def test_faithfulness_escalates_an_unsupported_answer_and_keeps_a_supported_one(server):
    kept = _chat(server, ON_CORPUS, cascade("faithfulness", 0.5))
    assert "200" in kept["choices"][0]["message"]["content"]
    report = kept["cascade"]
    assert not report["escalated"] and report["answered_by"] == SMALL and _roles(report) == ["small", "faithfulness"]
    streamed = _chat(server, OFF_CORPUS, cascade("faithfulness", 0.5), stream=True)
    report = streamed["cascade"]
    assert report["escalated"] and report["confidence"] < 0.5 and report["answered_by"] == LARGE
    assert _roles(report) == ["small", "faithfulness", "large"] and streamed["content"].strip()
    assert report["stages"][-1]["completion_tokens"] > 0


def test_verify_escalates_the_unsupported_answer_by_the_small_models_own_p_yes(server):
    """The crafted case under the logit confidence: SmolLM2 gives its copied on-corpus answer a higher
    P(yes) than its from-memory answer to an off-corpus question, and a threshold between the two keeps
    the first and escalates the second (streamed: only the large model's answer is sent)."""
    probes = {q: _chat(server, q, cascade("verify", 0.0, k=1))["cascade"] for q in (ON_CORPUS, OFF_CORPUS)}
    for report in probes.values():
        assert report["policy"] == "verify" and not report["escalated"]  # threshold 0 accepts any confidence
        verify = next(stage for stage in report["stages"] if stage["role"] == "verify")
        assert verify["method"] == "logits" and verify["completion_tokens"] == 0  # one pass, nothing sampled
        assert verify["cached_tokens"] > 0 and verify["prompt_tokens"] > verify["cached_tokens"]
        assert 0 < report["confidence"] < 1
    right, wrong = probes[ON_CORPUS]["confidence"], probes[OFF_CORPUS]["confidence"]
    assert right > wrong, probes
    threshold = round((right + wrong) / 2, 4)
    kept = _chat(server, ON_CORPUS, cascade("verify", threshold, k=1))
    assert "200" in kept["choices"][0]["message"]["content"]
    report = kept["cascade"]
    assert report["threshold"] == threshold and not report["escalated"] and report["answered_by"] == SMALL
    assert _roles(report) == ["small", "verify"]
    streamed = _chat(server, OFF_CORPUS, cascade("verify", threshold, k=1), stream=True)
    report = streamed["cascade"]
    assert report["escalated"] and report["answered_by"] == LARGE and report["confidence"] < threshold
    assert _roles(report) == ["small", "verify", "large"] and streamed["content"].strip()
    assert streamed["citations"] is not None


def test_query_endpoint_and_collection_default_answer_with_a_cascade(server):
    response = httpx.post(f"{server}/v1/query", json={"query": OFF_CORPUS, "collection": "demo", "cards": "none",
                                                      "llm": cascade("router", 0.5)}, timeout=900)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"] == LARGE and answer["cascade"]["escalated"]
    metrics = httpx.get(f"{server}/metrics", timeout=30).text
    escalations = [line for line in metrics.splitlines()
                   if line.startswith("mighty_cascade_escalations_total{") and 'collection="demo"' in line
                   and 'policy="router"' in line]
    assert escalations and float(escalations[0].rsplit(" ", 1)[1]) >= 2
    created = httpx.post(f"{server}/v1/collections", json={"name": "cascaded", "default_llm": cascade("router", 0.4)},
                         timeout=60)
    assert created.status_code == 201 and created.json()["default_llm"] == cascade("router", 0.4)


@pytest.mark.parametrize("llm, reason", [
    (f"cascade:{SMALL}>{LARGE}?policy=vote", "unknown cascade policy"),
    (f"cascade:{SMALL}>{LARGE}?threshold=1.5", "between 0 and 1"),
    (f"cascade:{SMALL}>{SMALL}", "same model on both sides"),
    (f"cascade:{SMALL}>nonsense", "unknown model 'nonsense'"),
])
def test_bad_cascades_are_422_with_the_reason(server, llm, reason):
    query = httpx.post(f"{server}/v1/query", json={"query": "q", "collection": "demo", "llm": llm}, timeout=60)
    chat = httpx.post(f"{server}/v1/chat/completions", timeout=60,
                      json={"model": "rag:demo", "llm": llm, "messages": [{"role": "user", "content": "q"}]})
    created = httpx.post(f"{server}/v1/collections", json={"name": "bad", "default_llm": llm}, timeout=60)
    for response in (query, chat, created):
        assert response.status_code == 422 and reason in response.text, response.text


def test_a_bare_cascade_model_or_a_missing_router_is_422(server):
    bare = httpx.post(f"{server}/v1/chat/completions", timeout=60,
                      json={"model": cascade("verify", 0.5), "messages": [{"role": "user", "content": "q"}]})
    assert bare.status_code == 422 and "answers over a collection" in bare.text
    created = httpx.post(f"{server}/v1/collections", json={"name": "plain"}, timeout=60)
    assert created.status_code == 201
    no_router = httpx.post(f"{server}/v1/query", timeout=60,
                           json={"query": "q", "collection": "plain", "llm": cascade("router", 0.5)})
    assert no_router.status_code == 422 and "no trained cascade router" in no_router.text
