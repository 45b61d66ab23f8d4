"""`mighty serve --ray`: the same FastAPI service on Ray Serve.

The ingress deployment wraps `api.app.create_app` with a backend (`backend.ServeBackend`) that sends
shard searches to one deployment per shard, query embedding to an embedder deployment, and every
local-model call (`local/<model>`, `fusion:<base>+<card>`: answers, chat completions, fused
generation) to the model deployment (`models.LocalModels`), whose replicas load models with
`@serve.multiplexed` and receive each model's calls where it is already loaded. Knowledge cards
(`cards` on `/v1/query`) and a cascade's `verify` by logits still load their models in the ingress. Without `--ray` none of this is imported,
and Ray need not be installed (it is the optional `ray` extra).
"""
