"""Shards on a simulated multi-node Ray cluster: placement, a lost node, and recovery.

A head without CPUs and one node per shard, each declaring a `shard_<i>` resource, all on loopback
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps Ray off the machine's network address). Each shard actor
must run on its own node and hold open only its own shard folder; removing a node must flag the
result as partial and name the shard that answered (or refuse, by policy); adding the node back
must bring the shard back with the full, exact result.
"""
from __future__ import annotations

import os
import time

import pytest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray reads it: loopback only

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from indexes.documents import SourceDocument  # noqa: E402
from indexes.ray_shards import RayShardedCollection, shard_resource  # noqa: E402
from indexes.shard_search import ShardUnavailable  # noqa: E402
from indexes.shards import shard_folder, shard_of  # noqa: E402
from rag.schemas import RetrievalRequest  # noqa: E402
from tests.shard_helpers import BagOfWordsRetriever, build, upsert  # noqa: E402

SHARDS = 2
QUERY = RetrievalRequest(query="temperature thermometer mercury", mode="hybrid", top_k=10)


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        nodes = [cluster.add_node(num_cpus=1, resources={shard_resource(i): 1}) for i in range(SHARDS)]
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()  # gcs_server ignores SIGTERM: always shut the cluster down explicitly


@pytest.fixture(scope="module")
def collection(tmp_path_factory, msmarco_records):
    documents = [SourceDocument(r["_id"], r["text"]) for r in msmarco_records[:150]]
    return build(tmp_path_factory.mktemp("ray-home"), SHARDS, documents)


def _key(result):
    return [((h.id, h.chunk), round(h.score, 6)) for h in result.hits]


@pytest.mark.slow
def test_shards_run_on_their_nodes_lose_a_node_recover_and_follow_commits(cluster, collection):
    cluster, nodes = cluster
    expected = BagOfWordsRetriever(collection).search(QUERY)
    on_ray = RayShardedCollection(collection, timeout_s=60)
    retriever = BagOfWordsRetriever(on_ray)
    try:
        full = retriever.search(QUERY)
        assert _key(full) == _key(expected)
        assert full.shards.answered == [0, 1] and not full.shards.partial
        home = collection.folder.parent.parent
        for placement, node in zip(on_ray.placements(home), nodes):
            assert placement.node_id == node.node_id
            own = str(shard_folder(collection.folder, placement.shard))
            assert placement.open_files and all(path.startswith(own + "/") for path in placement.open_files)

        cluster.remove_node(nodes[1])
        on_ray.timeout_s = 3
        partial = retriever.search(QUERY)
        assert partial.shards.partial and partial.shards.missing == [1] and partial.shards.answered == [0]
        assert partial.hits and all(shard_of(h.id, SHARDS) == 0 for h in partial.hits)
        on_ray.policy = "refuse"
        with pytest.raises(ShardUnavailable, match=r"\[1\]"):
            on_ray.snapshot().bm25_top_k(collection.config.bm25, ["temperatur"], [1.0], 5)
        on_ray.policy = "flag"

        replacement = cluster.add_node(num_cpus=1, resources={shard_resource(1): 1})
        on_ray.timeout_s = 10
        deadline = time.monotonic() + 120
        recovered = retriever.search(QUERY)
        while recovered.shards.partial and time.monotonic() < deadline:  # the actor restarts on the new node
            recovered = retriever.search(QUERY)
        assert not recovered.shards.partial and _key(recovered) == _key(expected)
        assert on_ray.placements(home)[1].node_id == replacement.node_id

        with collection.writer() as writer:  # a new generation reaches the actors at the next query
            upsert(writer, collection, SourceDocument("new-doc", "zebra quagga okapi"))
            writer.commit()
        found = retriever.search(RetrievalRequest(query="zebra quagga", mode="bm25"))
        assert [h.id for h in found.hits] == ["new-doc"] and found.generation == collection.snapshot().generation
    finally:
        on_ray.close()
