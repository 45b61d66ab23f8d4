"""Card knowledge in answers, on a real server: named, automatic and no cards, on /v1/query and rag: chat."""
from __future__ import annotations

import os
import shutil

import httpx
import pytest

from tests.cards_helpers import make_card
from tests.helpers import free_port, run_mighty, start_server

pytestmark = pytest.mark.slow
QUERY = "How does Mighty keep serving queries if indexing crashes?"
NO_CHECKS = {"factuality": False, "relevance_min": -1.0}  # keep whatever the (untrained) card writes


@pytest.fixture(scope="module")
def server(demo_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("card-answers")
    home = root / "home"
    shutil.copytree(demo_home, home)
    # the docs card goes through the whole lifecycle: trained on the collection, validated, registered, active
    trained = run_mighty(home, "cards", "train", "--corpus", "collection:demo", "--name", "mighty-docs",
                         "--steps", "2", "--block-size", "64", "--batch-size", "2", "--eval-tokens", "128",
                         "--owner", "ops", "--domain", "Mighty operations", "--description",
                         "How the Mighty retrieval service indexes documents, survives crashes during indexing "
                         "and keeps serving queries", "--threads", "2")
    assert trained.returncode == 0, trained.stderr
    assert "registered card:mighty-docs@1" in trained.stderr
    token_card = make_card(root / "token-card", "tokens", kind="fusion", seed=3)
    registered = run_mighty(home, "cards", "register", str(token_card))
    assert registered.returncode == 0, registered.stderr
    port = free_port()
    env = {**os.environ, "MIGHTY_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    process = start_server(["serve", "--port", str(port), "--no-auth"], port, env, root / "server.log", 300)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
        yield client
    process.terminate()
    process.wait(timeout=30)


def _query(client: httpx.Client, **extra) -> httpx.Response:
    return client.post("/v1/query", json={"query": QUERY, "collection": "demo", "max_tokens": 12, **extra})


def test_named_card_knowledge_is_a_cited_source_with_provenance(server):
    response = _query(server, cards=["mighty-docs"], card_selectors=NO_CHECKS)
    assert response.status_code == 200, response.text
    body = response.json()
    (decision,) = body["cards"]["considered"]
    assert decision["card"] == "mighty-docs" and decision["reason"] == "named on the request"
    (report,) = body["cards"]["cards"]
    assert report["used"] and report["generated"] >= 1 and "collection 'demo'" not in report["evidence"]
    card_sources = [s for s in body["sources"] if s["kind"] == "card"]
    assert [s["id"] for s in card_sources] == ["card:mighty-docs@1"]
    assert card_sources[0]["number"] == len(body["sources"])  # numbered after the retrieved chunks
    assert any(s["kind"] == "chunk" for s in body["sources"])


def test_factuality_checks_the_card_against_its_collection(server):
    body = _query(server, cards=["mighty-docs"]).json()
    (report,) = body["cards"]["cards"]
    assert "collection 'demo'" in report["evidence"]
    checked = report["factuality"]
    assert checked["checked"] == checked["supported"] + checked["unsupported"]
    card_sources = [s for s in body["sources"] if s["kind"] == "card"]
    assert len(card_sources) == (1 if checked["supported"] else 0)


def test_automatic_routing_reports_why_each_card_was_considered(server):
    body = _query(server, cards="auto", card_selectors=NO_CHECKS).json()
    considered = {d["card"]: d for d in body["cards"]["considered"]}
    assert set(considered) == {"mighty-docs"}  # a fusion-only card never writes knowledge
    assert considered["mighty-docs"]["selected"] and "similarity" in considered["mighty-docs"]["reason"]
    unrelated = _query(server, query="What is a good recipe for sourdough bread?", cards="auto").json()
    assert unrelated["cards"]["considered"][0]["selected"] is False
    assert all(s["kind"] == "chunk" for s in unrelated["sources"])


def test_no_cards_and_bad_card_choices(server):
    assert _query(server, cards="none").json()["cards"] is None
    missing = _query(server, cards=["missing"])
    assert missing.status_code == 404 and "missing" in missing.json()["detail"]
    wrong_kind = _query(server, cards=["tokens"])
    assert wrong_kind.status_code == 422 and "cannot write knowledge" in wrong_kind.json()["detail"]
    assert _query(server, cards="sometimes").status_code == 422


def test_rag_chat_completion_carries_the_card_report(server):
    response = server.post("/v1/chat/completions", json={
        "model": "rag:demo", "messages": [{"role": "user", "content": QUERY}], "max_tokens": 12,
        "cards": ["mighty-docs"]})
    assert response.status_code == 200, response.text
    assert response.json()["cards"]["considered"][0]["card"] == "mighty-docs"
