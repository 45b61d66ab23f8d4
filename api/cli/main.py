"""Entry point of the `mighty` command."""
from __future__ import annotations

import os

# Before torch loads OpenMP: idle worker threads sleep instead of spinning. On a shared CPU a spinning
# thread waits for a descheduled peer at every barrier; training measured 9 tokens/s spinning vs 90
# passive on 2 busy cores (benchmarks/RESULTS.md, card training).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path

import typer

from api.cli import (card_commands, cascade_commands, eval_commands, fusion_commands, index_commands,
                     route_commands,
                     search_commands, serve_commands, train_commands)
from api import providers
from api.cli.context import quiet_models

app = typer.Typer(name="mighty", help="Mighty: retrieval and small expert models that make large ones better.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(index_commands.app, name="index")
app.add_typer(eval_commands.app, name="eval")
app.add_typer(fusion_commands.app, name="fusion")
app.add_typer(cascade_commands.app, name="cascade")
app.command("search")(search_commands.search)
app.command("demo")(search_commands.demo)
app.command("serve")(serve_commands.serve)
app.add_typer(serve_commands.keys_app, name="keys")
card_commands.app.command("train")(train_commands.train)
card_commands.app.command("route-check")(route_commands.route_check)
card_commands.app.command("route-fit")(route_commands.route_fit)
app.add_typer(card_commands.app, name="cards")


@app.callback()
def main(ctx: typer.Context,
         home: Path = typer.Option(None, "--home", envvar="MIGHTY_HOME",
                                   help="Data folder for all state (default ~/.mighty).")) -> None:
    quiet_models()
    providers.install()
    if home is not None:  # commands that read settings (MIGHTY_*) see the same home as --home
        os.environ["MIGHTY_HOME"] = str(home)
    ctx.obj = {"home": home}


if __name__ == "__main__":
    app()
