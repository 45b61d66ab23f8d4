"""`mighty cards train`: fine-tune a LoRA card on a domain corpus, on CPU, and register it.

Only options the user gives reach `TrainSettings`, so the tuned defaults live in one place
(experts/training/settings.py). The owner defaults to $MIGHTY_TEAM, else "local": a card trained on
this machine belongs to the local operator until it is registered for a team.
"""
from __future__ import annotations

import json
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.table import Table

from api.cli.context import err, fail, home_from, out
from api.errors import describe
from experts.manifest import NAME, TEAM
from experts.models import ModelLoadError
from experts.training.corpus import CorpusError
from experts.training.run import TrainingError, TrainReport, TrainRequest, train_card
from experts.training.settings import DEFAULT_BASE, TrainSettings
from indexes.collection import Home

EXIT_ERROR = 1
EXIT_INTERRUPTED = 3  # stopped before the last step; the same command resumes


def train(ctx: typer.Context,
          corpus: str = typer.Option(..., "--corpus", help="JSONL/text/markdown file or folder, or collection:NAME."),
          name: str = typer.Option(..., "--name", help="Card name (lowercase letters, digits, '.', '_', '-')."),
          base: str = typer.Option(None, "--base", help=f"Registered local name, model folder or HF id (default "
                                                        f"{DEFAULT_BASE}, or $MIGHTY_CARD_BASE)."),
          steps: int = typer.Option(None, "--steps", help="Optimizer steps (default: tuned per base for <= 25 min "
                                                          "on 2 cores)."),
          epochs: float = typer.Option(None, "--epochs", help="Passes over the training text, instead of --steps."),
          owner: str = typer.Option(None, "--owner", envvar="MIGHTY_TEAM", help="Owning team (default: local)."),
          kind: str = typer.Option("knowledge", "--kind", help="knowledge | fusion | both."),
          steers: list[str] = typer.Option(None, "--steers",
                                           help="A larger base the card may steer by fusion (repeatable; default "
                                                "per base: a 0.5B card steers qwen2.5-coder-1.5b-instruct)."),
          seed: int = typer.Option(None, "--seed", help="Fixes the split, the adapter init and the data order."),
          heldout_fraction: float = typer.Option(None, "--heldout-fraction", help="Documents held out (0.1)."),
          lr: float = typer.Option(None, "--lr", help="Peak learning rate."),
          rank: int = typer.Option(None, "--rank", help="LoRA rank."),
          last_layers: int = typer.Option(None, "--last-layers", min=0,
                                          help="Adapt only the top N layers (0: all; default per base, 0.5B: 8)."),
          block_size: int = typer.Option(None, "--block-size", "--max-length", help="Tokens per training block."),
          batch_size: int = typer.Option(None, "--batch-size", help="Blocks per optimizer step."),
          eval_tokens: int = typer.Option(None, "--eval-tokens", help="Held-out tokens scored (0: all)."),
          domain: str = typer.Option(None, "--domain", help="Card domain (default: the corpus name)."),
          description: str = typer.Option(None, "--description", help="Default: built from the corpus titles."),
          version: str = typer.Option(None, "--version", help="Default: the next free version of NAME."),
          out_dir: Path = typer.Option(None, "--out", help="Card folder (default <home>/training/NAME)."),
          resume: bool = typer.Option(None, "--resume/--no-resume",
                                      help="Default: resume when a checkpoint of the same settings exists."),
          threads: int = typer.Option(None, "--threads", min=1,
                                      help="CPU threads for torch (default: one per core)."),
          checkpoint_every: int = typer.Option(10, "--checkpoint-every", min=1,
                                               help="Steps between checkpoints (resume points)."),
          overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished card in the folder."),
          register: bool = typer.Option(True, "--register/--no-register", help="Register the finished card."),
          as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the figures.")) -> None:
    """Fine-tune a LoRA card on a corpus, report held-out perplexity of base vs card, write and register it."""
    home = home_from(ctx)
    if not NAME.match(name):
        raise fail(f"--name {name!r}: use 1-64 lowercase letters, digits, '.', '_' or '-'", EXIT_ERROR)
    owner = owner or "local"
    if not TEAM.match(owner):
        raise fail(f"--owner {owner!r}: a team name is letters, digits, '.', '_' or '-'", EXIT_ERROR)
    if kind not in ("knowledge", "fusion", "both"):
        raise fail(f"--kind {kind!r}: use knowledge, fusion or both", EXIT_ERROR)
    given = dict(base=base, steps=steps, epochs=epochs, seed=seed, heldout_fraction=heldout_fraction, lr=lr,
                 rank=rank, last_layers=last_layers, block_size=block_size, batch_size=batch_size, eval_tokens=eval_tokens)
    try:
        settings = TrainSettings(**{key: value for key, value in given.items() if value is not None})
    except ValidationError as exc:
        raise fail(describe(exc), EXIT_ERROR) from None
    if settings.micro_batch > settings.batch_size:
        settings = settings.model_copy(update={"micro_batch": settings.batch_size})
    request = TrainRequest(corpus=corpus, name=name, out=(out_dir or home.root / "training" / name).expanduser(),
                           settings=settings, owner=owner, kind=kind, version=version or next_version(home, name),
                           domain=domain, description=description, home_root=home.root, resume=resume,
                           checkpoint_every=checkpoint_every, overwrite=overwrite, steers=steers or None)
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        report = train_card(request, err)
    except (CorpusError, ModelLoadError, TrainingError, ValueError) as exc:
        raise fail(str(exc), EXIT_ERROR) from None
    if not report.finished:
        _print(report, as_json)
        err.print(f"stopped after step {report.steps} of {report.total_steps}; run the same command again to resume")
        raise typer.Exit(EXIT_INTERRUPTED)
    registered = register_card(home, Path(report.card_dir or ""), owner) if register else None
    _print(report, as_json, registered)


def _print(report: TrainReport, as_json: bool, registered: str | None = None) -> None:
    if as_json:
        out.print_json(json.dumps({**report.model_dump(mode="json"), "registered": registered}))
        return
    table = Table("", "value")
    table.add_row("card", f"{report.name}@{report.version}" + (f" in {report.card_dir}" if report.card_dir else ""))
    table.add_row("held-out documents", f"{report.heldout_documents} ({report.heldout_tokens} tokens scored)")
    table.add_row("held-out perplexity, base", f"{report.heldout_ppl_base:.2f}")
    if report.heldout_ppl_card is not None and report.ppl_reduction is not None:
        change = "lower" if report.ppl_reduction >= 0 else "higher"
        table.add_row("held-out perplexity, card",
                      f"{report.heldout_ppl_card:.2f} ({abs(report.ppl_reduction):.1%} {change})")
    table.add_row("training", f"{report.steps}/{report.total_steps} steps, {report.train_tokens} tokens, "
                              f"{report.train_seconds:.0f} s, {report.train_tokens_per_s:.0f} tokens/s")
    if registered:
        table.add_row("registered", registered)
    out.print(table)


# --- registry ------------------------------------------------------------------------------------

def next_version(home: Home, name: str) -> str:
    """The version a new card of this name gets: the next free one in the home's registry."""
    from api.card_registry import open_registry
    from experts.errors import CardNotFound

    try:
        existing = [ref.version for ref in open_registry(home.root).versions(name)]
    except CardNotFound:
        existing = []
    return next_free_version(existing)


def next_free_version(existing: list[str]) -> str:
    """One more than the highest whole-number version ("1" for a new name), never one already taken."""
    taken = set(existing)
    candidate = max((int(version) for version in existing if version.isdigit()), default=0) + 1
    while str(candidate) in taken:
        candidate += 1
    return str(candidate)


def register_card(home: Home, folder: Path, owner: str) -> str | None:
    """Register the trained card and make it the active version (`mighty cards rollback` undoes that);
    returns its reference (card:name@version)."""
    from api.card_registry import open_registry, operator_actor
    from experts.errors import CardError

    try:
        ref = open_registry(home.root).register(folder, operator_actor(), activate=True)
    except CardError as error:
        raise fail(f"the card was trained and written to {folder} (kept), but registering it failed: {error}; "
                   f"fix that and run `mighty cards register {folder}`", EXIT_ERROR) from None
    err.print(f"registered {ref.manifest.ref} (owner {owner}, active)", highlight=False)
    return ref.manifest.ref
