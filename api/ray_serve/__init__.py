"""`mighty serve --ray`: the same FastAPI service on Ray Serve.

The ingress deployment wraps `api.app.create_app` with a backend (`backend.ServeBackend`) that
sends shard searches to one deployment per shard and query embedding to an embedder deployment;
local models answer from a model deployment that loads cards with `@serve.multiplexed`. Without
`--ray` none of this is imported, and Ray need not be installed (it is the optional `ray` extra).
"""
