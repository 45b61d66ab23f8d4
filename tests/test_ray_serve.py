"""`mighty serve --ray ADDRESS` on a single-node Ray: the REST API through Ray Serve, with each shard
of a sharded collection a Serve deployment and query embedding in the embedder deployment.

Ray is started here (`num_cpus=2`, no dashboard), once for the module; the real CLI joins it, so
the test sees what a user sees: answers over HTTP equal to the single-process retriever's, the
shards report, and a commit that reaches the shard replicas at the next query.
"""
from __future__ import annotations

import os

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
from tests.helpers import serving  # noqa: E402
from indexes.config import CollectionConfig, FusionConfig  # noqa: E402

SHARDS = 2


@pytest.fixture(scope="module")
def ray_address():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def home(tmp_path_factory, msmarco_records):
    root = tmp_path_factory.mktemp("serve-home") / "home"
    # real embeddings: the embedder deployment embeds queries with the collection's own model
    collection = Home(root).create(CollectionConfig(name="corpus", shards=SHARDS, fusion=FusionConfig(calibrate=False)))
    with collection.writer() as writer:
        for record in msmarco_records[:60]:
            writer.upsert(SourceDocument(record["_id"], record["text"]))
        writer.commit()
    return root


def _same(hits, expected) -> bool:
    return ([(h["id"], h["chunk"]) for h in hits] == [(h.id, h.chunk) for h in expected]
            and all(abs(h["score"] - e.score) < 1e-5 for h, e in zip(hits, expected)))


@pytest.mark.slow
def test_serve_on_ray_answers_like_one_process_and_follows_commits(ray_address, home):
    local = Retriever(Home(home).open("corpus"))
    with serving(home, "--no-auth", "--ray", ray_address, "--shard-timeout", "9", timeout=420) as (url, _, log):
        deployments = serve.status().applications["mighty"].deployments
        assert {"ingress", "embedder", "corpus--shard-0", "corpus--shard-1"} <= set(deployments)
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
