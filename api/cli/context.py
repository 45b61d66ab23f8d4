"""Shared CLI plumbing: the home folder, consoles, progress bars and clean exits."""
from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from indexes.collection import Home
from indexes.config import MightySettings

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

EXIT_REJECTED = 1  # some input was rejected or not found; the rest was processed
EXIT_EMBEDDER_CHANGED = 3  # stored vectors come from another embedder: `mighty index reembed NAME`


def home_from(ctx: typer.Context) -> Home:
    root = (ctx.obj or {}).get("home") or MightySettings().home
    return Home(Path(root))


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)  # messages quote user input
    return typer.Exit(code)


def quiet_models() -> None:
    """Never reach a model hub at run time; weights come from local folders or packages."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("sentence_transformers", "transformers", "transformers.modeling_utils"):
        logging.getLogger(name).setLevel(logging.ERROR)


class RichProgress:
    """A `ProgressSink` drawing one bar per stage on stderr (hidden when stderr is not a terminal)."""

    def __init__(self) -> None:
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=False)
        self._task = None

    def __enter__(self) -> "RichProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._progress.stop()

    def start(self, stage: str, total: int | None) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=self._progress.tasks[-1].total or 0)
        self._task = self._progress.add_task(stage, total=total)

    def advance(self, amount: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, amount)
