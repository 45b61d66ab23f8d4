"""Shards served by Ray actors, each pinned to the node that carries its `shard_<i>` resource.

An actor opens only its own shard folder and answers the coordinator's calls for a given shard
generation (`indexes.shard_search.ShardSearcher`), so shards can live on different machines. Actors
restart without limit: when a node goes, its shard's calls fail or time out and the coordinator
reports the shard missing (a partial result, or a refusal by policy), and when a node with that
resource returns, Ray starts the actor there again and the shard answers once more.
Needs the `ray` extra (`pip install mighty[ray]`); nothing else in Mighty imports this module.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import RayError

from indexes.collection import Collection, ShardedCollection
from indexes.config import CollectionConfig
from indexes.shard_search import ShardedSnapshot, ShardFanout, ShardSearcher
from indexes.shards import shard_folder

CALL_TIMEOUT_S = 5.0


def shard_resource(shard: int) -> str:
    """The custom resource a node declares to host a shard (`ray start --resources '{"shard_0": 1}'`)."""
    return f"shard_{shard}"


@dataclass(frozen=True)
class ShardPlacement:
    """Where a shard actor runs, and which files under the home it holds open (its folder only)."""

    shard: int
    node_id: str
    folder: str
    open_files: list[str]


class ShardHost:
    """One shard of one collection, served to a coordinator (by a Ray actor here, or a Ray Serve
    replica in `api.ray_serve`); keeps the searcher of the generation it was last asked for."""

    def __init__(self, shard: int, folder: str, config_json: str) -> None:
        self.shard, self.folder = shard, Path(folder)
        self.collection = Collection(self.folder, CollectionConfig.model_validate_json(config_json))
        self.searchers: dict[int, ShardSearcher] = {}

    def call(self, generation: int, method: str, args: tuple) -> Any:
        searcher = self.searchers.get(generation)
        if searcher is None:
            searcher = ShardSearcher(self.collection.load_snapshot(generation), self.collection.config.bm25)
            self.searchers = {generation: searcher}  # older generations are no longer asked for
        return getattr(searcher, method)(*args)

    def placement(self, home: str) -> ShardPlacement:
        opened = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(home):
                opened.append(target)
        return ShardPlacement(self.shard, ray.get_runtime_context().get_node_id(), str(self.folder), sorted(opened))


ShardActor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)(ShardHost)


class RayFanout:
    """Calls shard actors in parallel and keeps the answers that arrive within the timeout."""

    def __init__(self, actors: list, generations: list[int], timeout_s: Callable[[], float]) -> None:
        self.actors, self.generations, self.timeout_s = actors, generations, timeout_s

    def call(self, method: str, calls: dict[int, tuple]) -> dict[int, Any]:
        refs = {shard: self.actors[shard].call.remote(self.generations[shard], method, args)
                for shard, args in calls.items()}
        if not refs:
            return {}
        deadline = time.monotonic() + self.timeout_s()
        try:  # the usual case: every shard answers, one blocking get
            return dict(zip(refs, ray.get(list(refs.values()), timeout=self.timeout_s())))
        except (RayError, TimeoutError):
            pass  # a shard failed or is late: keep what the others answer by the deadline
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=max(0.0, deadline - time.monotonic()))
        ready_set = set(ready)
        answered = {shard: ref for shard, ref in refs.items() if ref in ready_set}
        results = {}
        for shard, ref in answered.items():
            try:
                results[shard] = ray.get(ref)
            except RayError:  # the actor died or is restarting: this shard did not answer
                continue
        return results


class RemoteShardedCollection(ShardedCollection):
    """A sharded collection whose shards are searched elsewhere (the coordinator runs here): writes
    stay local, each query's shard calls go through `fanout`, which says which shards answered."""

    def __init__(self, base: ShardedCollection, timeout_s: float = CALL_TIMEOUT_S, policy: str = "flag") -> None:
        super().__init__(base.folder, base.config, base.allowed)
        self.timeout_s, self.policy = timeout_s, policy

    def fanout(self, generations: list[int]) -> ShardFanout:
        raise NotImplementedError

    def load_snapshot(self, generation: int | None = None) -> ShardedSnapshot:  # type: ignore[override]
        sharded = self.committed()
        return ShardedSnapshot(sharded, self.fanout(sharded.shards), sharded.segments or [0] * len(self.shards), None)

    def snapshot(self) -> ShardedSnapshot:  # type: ignore[override]
        view = super().snapshot()
        view.policy = self.policy  # "flag": partial results say which shards answered; "refuse": fail
        return view


class RayShardedCollection(RemoteShardedCollection):
    """A sharded collection whose shards are searched by Ray actors, one per shard."""

    def __init__(self, base: ShardedCollection, timeout_s: float = CALL_TIMEOUT_S, policy: str = "flag") -> None:
        super().__init__(base, timeout_s, policy)
        config_json = base.config.model_dump_json()
        self.actors = [ShardActor.options(name=None, resources={shard_resource(i): 0.01})
                       .remote(i, str(shard_folder(base.folder, i)), config_json)
                       for i in range(len(self.shards))]

    def fanout(self, generations: list[int]) -> RayFanout:
        return RayFanout(self.actors, generations, lambda: self.timeout_s)

    def placements(self, home: Path) -> list[ShardPlacement]:
        return ray.get([actor.placement.remote(str(home)) for actor in self.actors], timeout=60)

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
