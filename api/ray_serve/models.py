"""Local models on Ray Serve: the model deployment (`local-models`).

Each replica of `LocalModels` is an `api.local_models.InProcessModels` whose one loading method goes
through `@serve.multiplexed`, keyed by the call's `ModelRef.id` (`local/<name>`, or
`fusion:<base>+<card@version>...`). The ingress (`backend.ServeModels`) calls it through a handle
with `.options(multiplexed_model_id=id)`, so Serve sends a model's calls to a replica that already
holds it (a model no replica holds goes to the one holding fewest). A fused model is one id: its
base and cards load and decode together in one replica, since a network hop per token would cost
more than the token. Weights stay in the runtime's own caches (`rag.runtime.cache`, `experts.fusion.fused`);
Serve's per-replica LRU matches the fused-model cache's size, so what Serve routes by is what the
replica holds. Only model replicas import this module (the application imports it when it binds),
so shard and embedder replicas never load the fusion code.
"""
from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

from ray import serve

from api.local_models import InProcessModels, ModelRef, load
from experts.fusion.fused import KEEP_FUSED, FusedModel
from rag.runtime import LocalModel

MODELS_PER_REPLICA = KEEP_FUSED


@dataclass(frozen=True)
class ReplicaModels:
    """What one replica has done: how often it loaded each model id, and how many calls it served."""

    replica: str
    loads: dict[str, int]
    calls: dict[str, int]


class LocalModels(InProcessModels):
    """One replica of the model deployment: the in-process host, loading through Serve's multiplexing.
    `report()` says what it loaded and served (calls without a model id reach any replica)."""

    def __init__(self) -> None:
        self._refs: dict[str, ModelRef] = {}
        self.loads: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    async def model(self, ref: ModelRef) -> LocalModel | FusedModel:
        routed = serve.get_multiplexed_model_id()
        if routed != ref.id:  # routing by another id would send calls to replicas without the model
            raise RuntimeError(f"a call for {ref.id!r} was routed as {routed!r}: call the model deployment "
                               "with .options(multiplexed_model_id=ref.id)")
        self._refs[ref.id] = ref
        model = await self._loaded(ref.id)
        self.calls[ref.id] += 1
        return model

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def _loaded(self, model_id: str) -> LocalModel | FusedModel:
        model = await asyncio.to_thread(load, self._refs[model_id])  # seconds: off the replica's event loop
        self.loads[model_id] += 1
        return model

    def report(self) -> ReplicaModels:
        return ReplicaModels(serve.get_replica_context().replica_id.unique_id, dict(self.loads), dict(self.calls))
