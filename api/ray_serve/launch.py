"""Start the Serve application on a Ray cluster (or a local Ray) and keep it up until interrupted."""
from __future__ import annotations

import signal
import threading

from ray import serve

from api.ray_serve.deployments import ServeOptions, application
from api.settings import ServiceSettings
from indexes.ray_ingest import connect

APP_NAME = "mighty"


def start(settings: ServiceSettings, address: str | None, host: str, port: int,
          options: ServeOptions = ServeOptions()) -> None:
    """Deploy ingress, embedder, local models and shard deployments; returns once every replica is up."""
    connect(address)
    # one HTTP proxy, on the head: shard nodes take no client traffic, and a proxy on each would drop the
    # client connections it happened to hold when its node is lost (in a simulated cluster every node's
    # proxy even shares 127.0.0.1:port, so any of them may answer)
    serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": port})
    _check_http(host, port)
    serve.run(application(settings, options), name=APP_NAME, route_prefix="/", blocking=False)


def _check_http(host: str, port: int) -> None:
    """Serve already running on the cluster keeps its own HTTP address and ignores ours (with only a
    log warning): refuse to start rather than serve where nobody asked."""
    from ray.serve.context import _get_global_client  # what serve.start itself compares with (Ray 2.60)

    running = _get_global_client().http_config
    if (running.host, running.port) != (host, port):
        raise ValueError(f"Ray Serve already runs on this cluster at {running.host}:{running.port}; start with "
                         f"--host {running.host} --port {running.port}, or stop it first (`serve shutdown`)")


def serve_until_interrupted(settings: ServiceSettings, address: str | None, host: str, port: int,
                            options: ServeOptions = ServeOptions()) -> None:
    start(settings, address, host, port, options)
    signal.signal(signal.SIGTERM, _interrupt)  # a terminated server takes its deployments down too
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:  # the controller removes the deployments; Serve itself stays for the cluster's other users
        serve.delete(APP_NAME, _blocking=False)


def _interrupt(*_) -> None:
    raise KeyboardInterrupt
