"""`mighty serve` and `mighty keys ...`."""
from __future__ import annotations

import os
from dataclasses import dataclass

import typer
from rich.table import Table

from api.cli.context import err, fail, home_from, out
from api.origin import is_loopback

keys_app = typer.Typer(help="Manage API keys (stored hashed in the SQL database).", no_args_is_help=True)


def _settings(ctx: typer.Context, **overrides):
    from api.settings import ServiceSettings

    return ServiceSettings(home=home_from(ctx).root, **{k: v for k, v in overrides.items() if v is not None})


def serve(ctx: typer.Context, host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8000),
          no_auth: bool = typer.Option(False, "--no-auth/--auth",
                                       help="Serve without API keys: loopback only, and only when asked for."),
          llm: str = typer.Option(None, help="Default LiteLLM model string for answers."),
          workers: int = typer.Option(1, help="uvicorn worker processes."),
          ray: str = typer.Option(None, "--ray", metavar="ADDRESS",
                                  help="Serve on Ray Serve: a cluster address, or 'local' to start Ray here "
                                       "(needs the ray extra). Shards, the query embedder, the local models "
                                       "and the API become deployments."),
          shard_replicas: int = typer.Option(1, min=1, max=64, help="--ray: read replicas per shard."),
          shard_policy: str = typer.Option("flag", help="--ray: when a shard does not answer, 'flag' the result "
                                                        "as partial (naming the shards that answered) or "
                                                        "'refuse' it with 503."),
          shard_timeout: float = typer.Option(5.0, min=0.1, help="--ray: seconds a shard may take to answer."),
          model_replicas: int = typer.Option(1, min=1, max=64, help="--ray: replicas of the local-model deployment "
                                                                   "(each holds up to 3 models; a model's calls go "
                                                                   "to replicas that hold it)."),
          api_resource: str = typer.Option(None, help="--ray: a custom resource naming the nodes that run the API "
                                                      "and the query embedder (default: any node).")) -> None:
    """Start the REST service (OpenAPI docs at /docs)."""
    run_service(ctx, host, port, no_auth, llm, workers, ray,
                ServeChoices(shard_replicas, shard_policy, shard_timeout, api_resource, model_replicas))


@dataclass(frozen=True)
class ServeChoices:
    replicas: int = 1
    policy: str = "flag"
    timeout: float = 5.0
    api_resource: str | None = None
    model_replicas: int = 1


def run_service(ctx: typer.Context, host: str, port: int, no_auth: bool, llm: str | None = None, workers: int = 1,
                ray: str | None = None, choices: ServeChoices = ServeChoices()) -> None:
    """The service with plain arguments (`mighty demo` calls this too, outside typer's option parsing)."""
    import uvicorn

    from api.app import create_app

    if no_auth and not is_loopback(host):
        raise fail(f"--no-auth is only allowed on loopback, not on {host}; create a key with `mighty keys create`")
    settings = _settings(ctx, no_auth=no_auth, default_llm=llm, host=host)
    check_drafts()
    err.print(f"Mighty on http://{host}:{port} (docs at /docs; home {settings.home})")
    err.print(banner(settings), highlight=False)
    if ray is not None:
        _serve_on_ray(settings, ray, host, port, choices)
        return
    if workers < 2:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
        return
    # Worker processes import the app themselves: hand them the settings through the environment,
    # and split the cores between them instead of letting each embedder claim all of them.
    os.environ.update({"MIGHTY_HOME": str(settings.home), "MIGHTY_NO_AUTH": str(no_auth).lower(),
                       "MIGHTY_DEFAULT_LLM": settings.default_llm, "MIGHTY_HOST": host})
    os.environ.setdefault("MIGHTY_EMBED_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    uvicorn.run("api.app:create_app", factory=True, host=host, port=port, workers=workers, log_level="warning")


def check_drafts() -> None:
    """Speculative pairs (MIGHTY_DRAFT_MODELS) load and share a vocabulary, or the server does not start."""
    from rag.runtime import LocalModelError
    from rag.runtime.speculative import check_draft_models

    try:
        for pair in check_draft_models():
            err.print(f"speculative decoding: {pair}")
    except LocalModelError as error:
        raise fail(str(error)) from None


def _serve_on_ray(settings, address: str, host: str, port: int, choices: ServeChoices) -> None:
    if choices.policy not in ("flag", "refuse"):
        raise fail(f"--shard-policy is 'flag' or 'refuse', not {choices.policy!r}")
    if choices.timeout >= settings.retrieval_timeout_s:  # else a lost shard would time the whole query out
        raise fail(f"--shard-timeout ({choices.timeout:g} s) must be below the retrieval timeout "
                   f"({settings.retrieval_timeout_s:g} s, MIGHTY_RETRIEVAL_TIMEOUT_S)")
    try:
        from api.ray_serve.launch import serve_until_interrupted  # the optional ray extra
        from api.ray_serve.deployments import ServeOptions
    except ImportError:
        raise fail("--ray needs Ray: pip install 'mighty[ray]'") from None
    try:
        options = ServeOptions(choices.replicas, model_replicas=choices.model_replicas, timeout_s=choices.timeout,
                               policy=choices.policy,
                               api_resources={choices.api_resource: 0.01} if choices.api_resource else {})
        serve_until_interrupted(settings, address, host, port, options)
    except (ConnectionError, ValueError) as exc:
        raise fail(f"cannot use the Ray cluster at {address!r}: {exc}") from None


def banner(settings) -> str:
    """What a reader of the start-up log must know about who can reach this server."""
    from api.origin import allowed_host_names

    if settings.no_auth:
        auth = ("auth OFF (--no-auth): any program on this machine can read and change every collection; "
                "browsers' cross-site writes are still refused")
    else:
        auth = "auth on: requests need 'Authorization: Bearer <key>' (create one with `mighty keys create NAME`)"
    names = allowed_host_names(settings.host, settings.allowed_hosts)
    hosts = ("Host header not checked (bound to every interface; set MIGHTY_ALLOWED_HOSTS)" if names is None
             else f"answers Host {', '.join(sorted(names))}")
    return f"{auth}; {hosts}; cross-origin writes refused"


@keys_app.command("create")
def create(ctx: typer.Context, name: str = typer.Argument(...),
           role: str = typer.Option("reader", help="admin | reader | team:<name>")) -> None:
    from api.db import make_sessions, open_database
    from api.keys import KeyStore

    store = KeyStore(make_sessions(open_database(_settings(ctx).resolved_database_url())))
    try:
        token, info = store.create(name, role)
    except ValueError as exc:
        raise fail(str(exc)) from None
    err.print(f"key {info.id} ({info.name}, {info.role}) created; it is shown once:")
    print(token)


@keys_app.command("list")
def list_keys(ctx: typer.Context) -> None:
    from api.db import make_sessions, open_database
    from api.keys import KeyStore

    store = KeyStore(make_sessions(open_database(_settings(ctx).resolved_database_url())))
    table = Table("id", "name", "role", "prefix", "created", "revoked")
    for key in store.list():
        table.add_row(str(key.id), key.name, key.role, key.prefix, f"{key.created_at:%Y-%m-%d %H:%M}",
                      f"{key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "")
    out.print(table)


@keys_app.command("revoke")
def revoke(ctx: typer.Context, key_id: int = typer.Argument(...)) -> None:
    from api.db import make_sessions, open_database
    from api.keys import KeyStore

    store = KeyStore(make_sessions(open_database(_settings(ctx).resolved_database_url())))
    if not store.revoke(key_id):
        raise fail(f"no active key with id {key_id} (see `mighty keys list`)", code=1)
    out.print(f"key {key_id} revoked")
