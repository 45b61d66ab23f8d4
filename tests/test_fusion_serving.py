"""Fused models served by a real `mighty serve`: OpenAI client, LiteLLM, /v1/fusion/generate, rag: pipelines."""
from __future__ import annotations

import json
import os
import shutil
import time

import httpx
import pytest

from tests.fusion_helpers import BASE, larger_base, make_lora_card
from tests.helpers import free_port, run_mighty, start_server

QUESTION = [{"role": "user", "content": "Give one tip for a new startup."}]
LARGE = "tiny-large"  # an operator-registered base standing in for Qwen 1.5B: SmolLM2's tokenizer, other weights


@pytest.fixture(scope="module")
def server(demo_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion-serve")
    folder = make_lora_card(root / "essays-card", "essays", scale=0.03)
    home = root / "home"
    shutil.copytree(demo_home, home)
    registered = run_mighty(home, "cards", "register", str(folder))
    assert registered.returncode == 0, registered.stderr
    # a second card declares that it steers the larger base (as a 0.5B card steers the 1.5B one)
    steerer = make_lora_card(root / "steerer-card", "steerer", seed=1, scale=0.03, steers=[LARGE])
    registered = run_mighty(home, "cards", "register", str(steerer))
    assert registered.returncode == 0, registered.stderr
    card = "essays"  # clients name registered cards; the server never reads folders they name
    model = f"fusion:{BASE}+{card}"
    port = free_port()
    env = {**os.environ, "MIGHTY_HOME": str(home), "HF_HUB_OFFLINE": "1", "MIGHTY_ANSWER_TOKENS": "24",
           "MIGHTY_LLM_THREADS": "2",
           "MIGHTY_LOCAL_CONTEXT_TOKENS": "300", "MIGHTY_LLM_TIMEOUT_S": "600",  # CPU prefill of two models
           "MIGHTY_CARD_BASES": f"{LARGE}={larger_base(root / 'large')}"}
    # the server's default LLM is the fused model: rag: answers go through it
    process = start_server(["serve", "--port", str(port), "--no-auth", "--llm", model], port, env, root / "server.log", 240)
    yield {"base": f"http://127.0.0.1:{port}", "model": model, "card": card, "folder": folder, "root": root,
           "steered": f"fusion:{LARGE}+steerer"}
    process.terminate()
    process.wait(timeout=30)


def test_openai_client_chat_completions_with_a_fused_model(server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server['base']}/v1", api_key="unused")
    completion = client.chat.completions.create(model=server["model"], messages=QUESTION, max_tokens=12,
                                                temperature=0)
    text = completion.choices[0].message.content
    assert text.strip() and completion.model == server["model"]
    assert completion.choices[0].finish_reason in ("stop", "length") and completion.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model=server["model"], messages=QUESTION, max_tokens=12,
                                                 temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].choices[0].finish_reason == completion.choices[0].finish_reason
    # a different rule, chosen per request through an extra body field, changes the distribution
    product = client.chat.completions.create(model=server["model"], messages=QUESTION, max_tokens=12,
                                             extra_body={"fusion_method": "product", "fusion_weights": [0.2, 0.8]})
    assert product.choices[0].message.content.strip()


def test_litellm_reaches_the_fused_model_over_http(server):
    import litellm

    response = litellm.completion(model=f"openai/{server['model']}", api_base=f"{server['base']}/v1",
                                  api_key="unused", messages=QUESTION, max_tokens=8, temperature=0)
    assert response.choices[0].message.content.strip()


def test_fusion_generate_batches_prompts_and_streams_the_same_text(server):
    body = {"cards": [str(server["card"])], "method": "mixture", "weights": [0.6, 0.4], "max_tokens": 10,
            "prompts": ["Startups should", "The best programmers"]}
    with httpx.Client(base_url=server["base"], timeout=300) as client:
        whole = client.post("/v1/fusion/generate", json=body)
        assert whole.status_code == 200, whole.text
        result = whole.json()
        assert result["method"] == "mixture" and result["parameters"]["weights"] == [0.6, 0.4]
        assert [c["index"] for c in result["choices"]] == [0, 1] and all(c["text"] for c in result["choices"])
        assert result["usage"]["completion_tokens"] == sum(c["completion_tokens"] for c in result["choices"])
        pieces = ["", ""]
        with client.stream("POST", "/v1/fusion/generate", json={**body, "stream": True}) as events:
            payloads = [json.loads(line[6:]) for line in events.iter_lines()
                        if line.startswith("data: ") and line != "data: [DONE]"]
        for payload in payloads:
            if "delta" in payload:
                pieces[payload["index"]] += payload["delta"]
        assert pieces == [c["text"] for c in result["choices"]]
        assert payloads[-1]["choices"] == result["choices"]


def test_bad_fusion_requests_get_clear_4xx(server):
    with httpx.Client(base_url=server["base"], timeout=300) as client:
        missing = client.post("/v1/chat/completions", json={"model": f"fusion:{BASE}+no-such-card",
                                                            "messages": QUESTION})
        assert missing.status_code == 404 and "no-such-card" in missing.json()["detail"]
        folder = client.post("/v1/fusion/generate", json={"cards": [str(server["folder"])], "prompt": "Hi"})
        assert folder.status_code == 404  # a path on the server is not a card name
        family = client.post("/v1/fusion/generate", json={"cards": [server["card"]], "base": "gemma3-270m",
                                                          "prompt": "Hi"})
        assert family.status_code == 422
        assert "gemma3-270m" in family.json()["detail"] and BASE in family.json()["detail"]
        no_card = client.post("/v1/chat/completions", json={"model": f"fusion:{BASE}", "messages": QUESTION})
        assert no_card.status_code == 422 and "names no card" in no_card.json()["detail"]
        method = client.post("/v1/fusion/generate", json={"cards": [str(server["card"])], "prompt": "Hi",
                                                          "method": "averaging"})
        assert method.status_code == 422 and "unknown fusion method" in method.json()["detail"]
        unfitted = client.post("/v1/fusion/generate", json={"cards": [str(server["card"])], "prompt": "Hi",
                                                            "method": "learned"})
        assert unfitted.status_code == 422 and "mighty fusion fit" in unfitted.json()["detail"]
        both = client.post("/v1/fusion/generate", json={"cards": [str(server["card"])], "prompt": "Hi",
                                                        "messages": QUESTION})
        assert both.status_code == 422 and "exactly one of prompt, prompts or messages" in both.text


def test_a_rag_pipeline_answers_with_the_fused_model(server):
    with httpx.Client(base_url=server["base"], timeout=300) as client:
        response = client.post("/v1/query", json={"query": "How does hybrid fusion weigh the retrievers?",
                                                  "collection": "demo", "max_tokens": 24})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == server["model"].replace("fusion:", "fusion/")  # LiteLLM's provider/model form
        assert body["answer"].strip() and body["sources"]


def test_a_declared_larger_base_is_served_steered_by_the_card(server):
    """The served form of `fusion:qwen2.5-coder-1.5b-instruct+<0.5B card>`, on SmolLM2 stand-ins: chat
    completions, /v1/fusion/generate with proxy (anti-expert: the card's untuned base) and contrastive
    decoding, a collection whose LLM is the steered base, and a refusal for an undeclared base."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{server['base']}/v1", api_key="unused")
    completion = client.chat.completions.create(model=server["steered"], messages=QUESTION, max_tokens=6,
                                                temperature=0, extra_body={"fusion_method": "proxy"})
    assert completion.model == server["steered"] and completion.usage.completion_tokens > 0
    with httpx.Client(base_url=server["base"], timeout=300) as http:
        for method in ("proxy", "contrastive"):
            answer = http.post("/v1/fusion/generate", json={"cards": ["steerer"], "base": LARGE, "method": method,
                                                            "prompt": "Startups should", "max_tokens": 5})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["model"] == f"{LARGE}+steerer@1.0.0" and body["method"] == method
            assert body["usage"]["completion_tokens"] > 0
        assert body["parameters"] == {"beta": 0.5, "plausibility": 0.1}
        undeclared = http.post("/v1/fusion/generate", json={"cards": [server["card"]], "base": LARGE,
                                                            "prompt": "Hi", "max_tokens": 2})
        assert undeclared.status_code == 422
        assert "does not declare that it steers" in undeclared.json()["detail"] and LARGE in undeclared.json()["detail"]
        created = http.post("/v1/collections", json={"name": "steered", "default_llm": server["steered"]})
        assert created.status_code == 201, created.text
        job = http.post("/v1/collections/steered/documents",
                        json={"documents": [{"_id": "d1", "title": "Startups",
                                             "text": "Startups should talk to users early and often."}]}).json()
        for _ in range(600):
            job = http.get(f"/v1/jobs/{job['id']}").json()
            if job["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.2)
        assert job["status"] == "succeeded", job
        response = http.post("/v1/query", json={"query": "What should startups do?", "collection": "steered",
                                                "max_tokens": 8})
        assert response.status_code == 200, response.text
        assert response.json()["model"] == server["steered"].replace("fusion:", "fusion/")
        assert response.json()["answer"].strip()
