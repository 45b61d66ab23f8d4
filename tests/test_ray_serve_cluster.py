"""`mighty serve --ray` on a simulated multi-node cluster: a lost node through Ray Serve.

A head node carrying the API (`mighty_api` resource: ingress, embedder and local models run there) and one node per
shard declaring `shard_<i>`, all on loopback (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0). Each shard
deployment's replica must run on its own node; removing a node must give HTTP answers flagged
partial that name the shard that answered (never a silent short list), or, under the "refuse"
policy, a 503 naming the missing shard; adding the node back must restart the shard's replica there
and give the full, exact answer again.
"""
from __future__ import annotations

import os
import time

import httpx
import pytest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray reads it: loopback only
os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "120")  # a busy 2-core machine starts slowly

import ray  # noqa: E402
from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from indexes.ray_shards import shard_resource  # noqa: E402
from indexes.shards import shard_folder, shard_of  # noqa: E402
from tests.shard_helpers import sharded_home  # noqa: E402
from tests.helpers import serving  # noqa: E402

SHARDS = 2
QUERY = {"collection": "corpus", "query": "what does a thermometer measure", "mode": "hybrid", "top_k": 8}


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False,
                                                            "resources": {"mighty_api": 1}})
    try:
        nodes = [cluster.add_node(num_cpus=0, resources={shard_resource(i): 1}) for i in range(SHARDS)]
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        yield cluster, nodes
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()  # gcs_server ignores SIGTERM: always shut the cluster down explicitly


@pytest.fixture(scope="module")
def home(tmp_path_factory, msmarco_records):
    return sharded_home(tmp_path_factory.mktemp("serve-cluster") / "home", msmarco_records[:60], SHARDS)


def _placement(home, shard: int):
    """Where the shard deployment's replica runs, and which files under the home it holds open."""
    handle = serve.get_deployment_handle(f"corpus--shard-{shard}", app_name="mighty")
    return handle.placement.remote(str(home)).result(timeout_s=120)


def _keys(body: dict) -> list:
    return [(h["id"], h["chunk"], round(h["score"], 6)) for h in body["hits"]]


@pytest.mark.slow
def test_a_lost_node_is_flagged_through_serve_and_its_shard_returns(cluster, home):
    cluster, nodes = cluster
    flags = ("--no-auth", "--ray", cluster.address, "--shard-timeout", "3", "--api-resource", "mighty_api")
    with serving(home, *flags, timeout=480) as (url, _, log), httpx.Client(base_url=url, timeout=120) as client:
        full = client.post("/v1/retrieve", json=QUERY).json()
        assert full["shards"] == {"shards": 2, "answered": [0, 1], "missing": [], "partial": False}, log.read_text()[-4000:]
        assert full["hits"]
        for shard, node in enumerate(nodes):
            placement = _placement(home, shard)
            own = str(shard_folder(home / "collections" / "corpus", shard))
            assert placement.node_id == node.node_id
            assert placement.open_files and all(path.startswith(own + "/") for path in placement.open_files)

        cluster.remove_node(nodes[1])
        partial = client.post("/v1/retrieve", json=QUERY)
        assert partial.status_code == 200, partial.text
        body = partial.json()
        assert body["shards"] == {"shards": 2, "answered": [0], "missing": [1], "partial": True}
        assert body["hits"] and all(shard_of(h["id"], SHARDS) == 0 for h in body["hits"])

        replacement = nodes[1] = cluster.add_node(num_cpus=0, resources={shard_resource(1): 1})
        deadline = time.monotonic() + 240
        recovered = client.post("/v1/retrieve", json=QUERY).json()
        while recovered["shards"]["partial"] and time.monotonic() < deadline:  # the replica restarts there
            time.sleep(2)
            recovered = client.post("/v1/retrieve", json=QUERY).json()
        assert not recovered["shards"]["partial"] and _keys(recovered) == _keys(full)
        assert _placement(home, 1).node_id == replacement.node_id


@pytest.mark.slow
def test_a_lost_node_is_refused_with_503_by_policy_through_serve(cluster, home):
    """`--shard-policy refuse`: while a shard's node is gone, queries answer 503 naming the shard, never
    a short list (the shard's return is the previous test's: the policy changes only the reporting)."""
    cluster, nodes = cluster
    serve.shutdown()  # Serve keeps an earlier server's HTTP port; this server listens on a port of its own
    flags = ("--no-auth", "--ray", cluster.address, "--shard-timeout", "3", "--api-resource", "mighty_api",
             "--shard-policy", "refuse")
    with serving(home, *flags, timeout=480) as (url, _, log), httpx.Client(base_url=url, timeout=120) as client:
        full = client.post("/v1/retrieve", json=QUERY)
        assert full.status_code == 200, full.text + log.read_text()[-4000:]
        assert full.json()["shards"] == {"shards": 2, "answered": [0, 1], "missing": [], "partial": False}

        cluster.remove_node(nodes[0])
        for _ in range(2):  # every query while the node is gone, not only the first
            refused = client.post("/v1/retrieve", json=QUERY)
            assert refused.status_code == 503, refused.text
            assert refused.json()["detail"] == "shard(s) [0] did not answer; partial results are refused"
            assert refused.headers["retry-after"] == "5"
        answer = client.post("/v1/query", json={**QUERY, "llm": "local/smollm2-135m-instruct"})
        assert answer.status_code == 503 and "shard(s) [0]" in answer.json()["detail"]  # before any LLM call
