"""`mighty serve --ray ADDRESS` on a single-node Ray: the REST API through Ray Serve, with each shard
of a sharded collection a Serve deployment, query embedding in the embedder deployment and local
models in the model deployment.

Ray is started here (`num_cpus=2`, no dashboard), once for the module, and one server joins it for
every test, so the tests see what a user sees: answers over HTTP equal to the single-process ones,
the shards report, a commit reaches the shard replicas at the next query, and each model's calls go
to the one model replica that loaded it.
"""
from __future__ import annotations

import os
import threading

import httpx
import pytest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray reads it: loopback only
os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "120")  # a busy 2-core machine starts slowly

import ray  # noqa: E402
from ray import serve  # noqa: E402

from indexes.collection import Home  # noqa: E402
from indexes.documents import SourceDocument  # noqa: E402
from rag.retriever import Retriever  # noqa: E402
from rag.schemas import RetrievalRequest  # noqa: E402
from tests.fusion_helpers import BASE, make_lora_card  # noqa: E402
from tests.shard_helpers import sharded_home  # noqa: E402
from tests.helpers import run_mighty, serving  # noqa: E402

SHARDS = 2
QUESTION = [{"role": "user", "content": "Give one tip for a new startup."}]


@pytest.fixture(scope="module")
def ray_address():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def card(tmp_path_factory):
    return make_lora_card(tmp_path_factory.mktemp("serve-card") / "essays-card", "essays", scale=0.03)


@pytest.fixture(scope="module")
def home(tmp_path_factory, msmarco_records, card):
    # real embeddings: the embedder deployment embeds queries with the collection's own model
    root = sharded_home(tmp_path_factory.mktemp("serve-home") / "home", msmarco_records[:60], SHARDS)
    registered = run_mighty(root, "cards", "register", str(card))  # clients name registered cards
    assert registered.returncode == 0, registered.stderr
    return root


@pytest.fixture(scope="module")
def server(ray_address, home):
    flags = ("--no-auth", "--ray", ray_address, "--shard-timeout", "9", "--model-replicas", "2")
    with serving(home, *flags, timeout=420) as (url, _, log):
        yield url, log


def _same(hits, expected) -> bool:
    return ([(h["id"], h["chunk"]) for h in hits] == [(h.id, h.chunk) for h in expected]
            and all(abs(h["score"] - e.score) < 1e-5 for h, e in zip(hits, expected)))


@pytest.mark.slow
def test_serve_on_ray_answers_like_one_process_and_follows_commits(server, home):
    url, log = server
    local = Retriever(Home(home).open("corpus"))
    deployments = serve.status().applications["mighty"].deployments
    assert {"ingress", "embedder", "local-models", "corpus--shard-0", "corpus--shard-1"} <= set(deployments)
    for mode, query in (("bm25", "temperature thermometer"), ("dense", "how hot is the sun"),
                        ("hybrid", "what does a thermometer measure")):
        answer = httpx.post(f"{url}/v1/retrieve", timeout=120,
                            json={"collection": "corpus", "query": query, "mode": mode, "top_k": 8})
        assert answer.status_code == 200, answer.text + log.read_text()[-4000:]
        body = answer.json()
        expected = local.search(RetrievalRequest(query=query, mode=mode, top_k=8))
        assert body["hits"] and _same(body["hits"], expected.hits)
        assert body["shards"] == {"shards": 2, "answered": [0, 1], "missing": [], "partial": False}

    collection = Home(home).open("corpus")
    with collection.writer() as writer:  # a new generation reaches the shard replicas at the next query
        writer.upsert(SourceDocument("new-doc", "zebra quagga okapi"))
        writer.commit()
    found = httpx.post(f"{url}/v1/retrieve", timeout=120,
                       json={"collection": "corpus", "query": "zebra quagga", "mode": "bm25"}).json()
    assert [h["id"] for h in found["hits"]] == ["new-doc"]
    assert found["generation"] == collection.snapshot().generation


def _replica_reports(replicas: int) -> list:
    """What each model replica loaded and served (calls without a model id reach any replica)."""
    handle = serve.get_deployment_handle("local-models", app_name="mighty")
    seen: dict = {}
    for _ in range(100):
        report = handle.report.remote().result(timeout_s=60)
        seen[report.replica] = report
        if len(seen) == replicas:
            break
    return list(seen.values())


def _chat(model: str) -> dict:
    return {"model": model, "messages": QUESTION, "max_tokens": 12}


def _events(client: httpx.Client, path: str, body: dict) -> list[dict]:
    import json

    with client.stream("POST", path, json={**body, "stream": True}) as events:
        assert events.status_code == 200, events.read()
        return [json.loads(line[6:]) for line in events.iter_lines()
                if line.startswith("data: ") and line != "data: [DONE]"]


@pytest.mark.slow
def test_local_models_decode_like_one_process_on_the_replica_that_holds_them(server, card):
    """Fused generation, fused and local chat through Serve give the single-process greedy text, and
    each model is loaded once, on one of the two model replicas, which then serves all its calls."""
    from api.local_models import FusionRule, PromptJob, chat, fused_ref, load, local_ref, prompt_result
    from api.routers.fusion import FusionGenerateRequest
    from experts.fusion.cards import resolve_card
    from rag.litellm_provider import sampling_options
    from rag.runtime import LOOP_NGRAM, SamplingOptions

    url, log = server
    fused, local = f"fusion:{BASE}+essays", f"local/{BASE}"
    generate = {"cards": ["essays"], "prompts": ["Startups should", "The best programmers"], "max_tokens": 12}
    with httpx.Client(base_url=url, timeout=300) as client:
        whole = client.post("/v1/fusion/generate", json=generate)
        assert whole.status_code == 200, whole.text + log.read_text()[-4000:]
        pieces = ["", ""]
        for event in _events(client, "/v1/fusion/generate", generate):
            if "delta" in event:
                pieces[event["index"]] += event["delta"]
        fused_chat = client.post("/v1/chat/completions", json=_chat(fused))
        assert fused_chat.status_code == 200, fused_chat.text
        local_chats = [client.post("/v1/chat/completions", json=_chat(local)) for _ in range(2)]
        assert all(r.status_code == 200 for r in local_chats), local_chats[0].text + log.read_text()[-4000:]
        local_stream = _events(client, "/v1/chat/completions", _chat(local))
        unknown = client.post("/v1/chat/completions", json=_chat(f"fusion:{BASE}+no-such-card"))
        assert unknown.status_code == 404 and "no-such-card" in unknown.json()["detail"]
        missing = client.post("/v1/chat/completions", json=_chat("local/no-such-model"))  # the replica's refusal
        assert missing.status_code == 502 and "unknown local model 'no-such-model'" in missing.text, missing.text

    # single process: what `mighty serve` without Ray runs (api.local_models), here in the test process
    ref = fused_ref(None, [resolve_card(str(card))])
    model = load(ref)
    request = FusionGenerateRequest(**generate)
    expected = prompt_result(model, FusionRule(), PromptJob(request.prompts, None, request.sampling(), None),
                             threading.Event())
    texts = [c["text"] for c in expected["choices"]]
    assert all(texts) and [c["text"] for c in whole.json()["choices"]] == texts and pieces == texts
    chat_options = SamplingOptions(max_tokens=12, no_repeat_ngram=LOOP_NGRAM)
    assert fused_chat.json()["choices"][0]["message"]["content"] == chat(model, FusionRule(), QUESTION, chat_options,
                                                                         None, threading.Event()).text
    local_text = load(local_ref(BASE)).generate(QUESTION, sampling_options({"max_tokens": 12})).text
    assert [r.json()["choices"][0]["message"]["content"] for r in local_chats] == [local_text, local_text]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in local_stream if c.get("choices"))
    assert streamed == local_text

    reports = _replica_reports(2)
    assert len(reports) == 2
    for model_id, calls in ((ref.id, 3), (local_ref(BASE).id, 3)):
        holders = [r for r in reports if r.loads.get(model_id)]
        assert len(holders) == 1 and holders[0].loads[model_id] == 1, reports  # loaded once, on one replica
        assert holders[0].calls.get(model_id) == calls, reports  # which then took every call for it
