"""The Serve deployments of `mighty serve --ray` and the application that binds them.

- one deployment per shard of every sharded collection (`<collection>--shard-<i>`): its replicas
  are read replicas of that shard folder, placed on nodes declaring the `shard_<i>` resource when
  the cluster has such nodes;
- the embedder (`embedder`), which embeds each query once for the coordinator;
- the local models (`local-models`, `models.LocalModels`): `local/` and `fusion:` decoding, each
  model loaded with `@serve.multiplexed` and its calls routed to replicas that hold it;
- the ingress (`ingress`), the unchanged FastAPI app, whose sharded collections fan out to the
  shard deployments and whose local-model calls go to the model deployment (`backend.ServeBackend`).

Replicas are Ray worker processes, which do not inherit the environment of the process that ran
`mighty serve --ray`: the model and API deployments get its MIGHTY_* and Hugging Face offline settings
(threads, operator-registered models, card bases) through their runtime environment.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import serve

from api.ray_serve.backend import ServeBackend
from api.settings import ServiceSettings
from indexes.collection import Home, ShardedCollection
from indexes.ray_shards import ShardHost, shard_resource
from indexes.shards import read_sharded, shard_folder


@dataclass(frozen=True)
class ServeOptions:
    """How the deployments are sized and how a lost shard is reported."""

    shard_replicas: int = 1
    embedder_replicas: int = 1
    model_replicas: int = 1  # replicas of the local-model deployment (each holds up to MODELS_PER_REPLICA)
    ingress_replicas: int = 1
    timeout_s: float = 5.0
    policy: str = "flag"  # "flag": partial results name the shards that answered; "refuse": 503
    cpus: float = 0.0  # CPUs each replica reserves (0: share the node's cores, as one process would)
    api_resources: dict[str, float] = field(default_factory=dict)  # where ingress and embedder run


class ShardReplica(ShardHost):
    """A read replica of one shard (`ShardHost` answers the coordinator's calls). It opens the
    committed generation and searches it once as it starts, so a replica (re)started on a node is
    ready, and fast, before traffic reaches it."""

    def __init__(self, shard: int, folder: str, config_json: str) -> None:
        super().__init__(shard, folder, config_json)
        committed = read_sharded(self.folder.parents[1])
        if committed is not None:
            self.call(committed.shards[shard], "warm", ())


class QueryEmbedder:
    """Embeds queries with each collection's own embedder (loaded once per replica)."""

    def __init__(self, home: str) -> None:
        self.home = Home(Path(home))

    def embed(self, collection: str, query: str) -> np.ndarray:
        return self.home.open(collection).embedder.encode([query])[0]


@serve.ingress()
class Ingress:
    """The whole REST API, as `mighty serve` has it, with sharded collections served by deployments."""

    def __init__(self, settings_json: str, shards: dict[str, list], embedder, models, timeout_s: float,
                 policy: str) -> None:
        self.settings = ServiceSettings.model_validate_json(settings_json)
        self.backend = ServeBackend(shards, embedder, models, timeout_s, policy)

    def __serve_build_asgi_app__(self) -> Any:
        from api.app import create_app

        return create_app(self.settings, self.backend)


def sharded_collections(home: Home) -> dict[str, ShardedCollection]:
    """The sharded collections present at start-up (broken ones are left to the ingress to report)."""
    found = {}
    for name in home.names():
        try:
            collection = home.open(name)
        except Exception:  # noqa: BLE001 - the ingress reports it through /healthz and 503
            continue
        if isinstance(collection, ShardedCollection):
            found[name] = collection
    return found


def forwarded_environment() -> dict[str, str]:
    """The settings a replica's runtime reads from the environment, as this process has them."""
    return {name: value for name, value in os.environ.items()
            if name.startswith("MIGHTY_") or name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}


def application(settings: ServiceSettings, options: ServeOptions = ServeOptions()):
    """The bound Serve application: ingress, embedder, local models and one deployment per shard."""
    from api.ray_serve.models import LocalModels  # here, not at the top: only model replicas import it

    home = Home(settings.home)
    available = ray.cluster_resources() if ray.is_initialized() else {}
    actor = {"num_cpus": options.cpus}
    shards: dict[str, list] = {}
    for name, collection in sharded_collections(home).items():
        config_json = collection.config.model_dump_json()
        shards[name] = []
        for i in range(len(collection.shards)):
            resources = {shard_resource(i): 0.01} if shard_resource(i) in available else {}
            deployment = serve.deployment(ShardReplica, name=f"{name}--shard-{i}", num_replicas=options.shard_replicas,
                                          ray_actor_options={**actor, "resources": resources})
            shards[name].append(deployment.bind(i, str(shard_folder(collection.folder, i)), config_json))
    api = {**actor, "resources": dict(options.api_resources), "runtime_env": {"env_vars": forwarded_environment()}}
    embedder = serve.deployment(QueryEmbedder, name="embedder", num_replicas=options.embedder_replicas,
                                ray_actor_options=api).bind(str(settings.home))
    models = serve.deployment(LocalModels, name="local-models", num_replicas=options.model_replicas,
                              ray_actor_options=api).bind()
    ingress = serve.deployment(Ingress, name="ingress", num_replicas=options.ingress_replicas,
                               ray_actor_options=api)
    return ingress.bind(settings.model_dump_json(), shards, embedder, models, options.timeout_s, options.policy)
