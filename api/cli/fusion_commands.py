"""`mighty fusion fit | eval | generate`: token-level fusion of a base model with expert cards."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.table import Table

from api.cli.context import RichProgress, err, fail, out

app = typer.Typer(help="Fuse a base model with expert cards at every decoding step.", no_args_is_help=True)

METHODS_HELP = "mixture | product | proxy | entropy | learned | contrastive"


def _cards(names: list[str]):
    from api.card_registry import open_registry
    from experts.fusion.cards import CardNotFound, resolve_card, use_registry
    from experts.manifest import ManifestError

    if not names:
        raise fail("name at least one card with --card (a registered card's name, or a card folder)")
    if not all(Path(name).expanduser().exists() for name in names):
        use_registry(open_registry())  # the home is $MIGHTY_HOME / --home (the callback exports it)
    try:
        return [resolve_card(name) for name in names]
    except (CardNotFound, ManifestError) as exc:
        raise fail(str(exc)) from None


def _base(base: str | None, cards) -> str:
    if base:
        return base
    bases = sorted({card.base for card in cards})
    if len(bases) > 1:
        raise fail(f"the cards have different bases ({', '.join(bases)}); choose one with --base")
    return bases[0]


def _options(**values):
    from pydantic import ValidationError

    from experts.fusion.evaluate import EvalOptions

    try:
        return EvalOptions(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        reasons = "; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors())
        raise fail(reasons) from None


def _run_evaluation(base: str, cards, corpus: Path, options):
    """evaluate() with progress bars, and every expected failure turned into a clean exit."""
    from experts.fusion.corpus import CorpusError
    from experts.fusion.evaluate import evaluate
    from experts.fusion.vocab import VocabularyMismatch
    from experts.models import ModelLoadError
    from rag.runtime import LocalModelError

    with RichProgress() as bars:
        def progress(stage: str, total: int | None):
            bars.start(stage, total)
            return bars.advance

        try:
            return evaluate(base, cards, corpus, options, progress)
        except (CorpusError, VocabularyMismatch, ModelLoadError, LocalModelError, ValueError) as exc:
            raise fail(str(exc)) from None


@app.command("eval")
def eval_command(
    card: list[str] = typer.Option(None, "--card", help="Card folder; repeat for several experts."),
    corpus: Path = typer.Option(..., "--corpus", help="JSONL corpus with title and text fields."),
    base: str = typer.Option(None, help="Base model (default: the cards' base)."),
    fit_fraction: float = typer.Option(None, help="Share of the usable documents used to fit weights (0.5)."),
    max_tokens: int = typer.Option(None, help="Cap on tokens scored per split."),
    window: int = typer.Option(None, help="Tokens per scored window (256)."),
    speed_tokens: int = typer.Option(None, help="Tokens decoded to time base vs fused (32; 0 skips)."),
    seed: int = typer.Option(None, help="Seed of the document split."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Perplexity of the base, each card and every fusion rule on held-out text, and decoding speed.

    On a corpus a card was trained on, only the card's recorded held-out documents are used: part of
    them fits the fusion weights, the rest is scored."""
    cards = _cards(card)
    options = _options(fit_fraction=fit_fraction, max_tokens=max_tokens, window=window,
                       speed_tokens=speed_tokens, seed=seed)
    report, _ = _run_evaluation(_base(base, cards), cards, corpus, options)
    if as_json:
        print(report.model_dump_json())
        return
    table = Table("model", "perplexity", "parameters", title=f"{report.tokens} tokens; {report.split}")
    table.add_row(f"base {report.base}", f"{report.ppl_base:.3f}", "")
    for label, ppl in report.ppl_expert.items():
        table.add_row(f"card {label}", f"{ppl:.3f}", "")
    for method, ppl in report.ppl_fused.items():
        table.add_row(f"fused: {method}", f"{ppl:.3f}", json.dumps(report.weights[method]))
    table.add_row("fused: mixture, equal weights", f"{report.ppl_equal_weights:.3f}", "")
    out.print(table)
    if report.tokens_per_s_base:
        out.print(f"decoding: base {report.tokens_per_s_base:.1f} tokens/s, fused ({report.speed_method}) "
                  f"{report.tokens_per_s_fused:.1f} tokens/s; fusion overhead {report.overhead_ms_per_step:.2f} "
                  "ms/step")


@app.command("fit")
def fit_command(
    card: list[str] = typer.Option(None, "--card", help="Card folder; repeat to fit several experts together."),
    corpus: Path = typer.Option(..., "--corpus", help="Held-out JSONL corpus (the card's own: its held-out split)."),
    base: str = typer.Option(None, help="Base model the weights are for (default: the cards' base)."),
    method: str = typer.Option("learned", help=METHODS_HELP),
    out_dir: Path = typer.Option(None, "--out", help="Folder for the new card version (default <card>-fit)."),
    fit_fraction: float = typer.Option(None, help="Share of the documents used to fit; the rest validates."),
    max_tokens: int = typer.Option(None, help="Cap on tokens scored per split."),
    seed: int = typer.Option(None, help="Seed of the document split."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Fit fusion weights on one split, validate on another, store them in a new version of the card."""
    from api.card_registry import operator_actor
    from experts.errors import CardError
    from experts.fusion.cards import store_fit
    from experts.fusion.combine import METHODS
    from experts.fusion.evaluate import settings_from

    if method not in METHODS:
        raise fail(f"--method must be one of {METHODS_HELP}, not {method!r}")
    cards = _cards(card)
    if out_dir is not None and len(cards) > 1:
        raise fail("--out names one folder; fit several cards without it (each gets <card>-fit)")
    base_name = _base(base, cards)
    if method == "contrastive":
        _store_contrastive(base_name, cards, out_dir, as_json)
        return
    options = _options(fit_fraction=fit_fraction, max_tokens=max_tokens, seed=seed, speed_tokens=0)
    report, fitted = _run_evaluation(base_name, cards, corpus, options)
    validation = report.validation_nll[method]
    settings = settings_from(fitted.params[method], base_name, cards, f"{corpus} ({report.split})", validation)
    stored = []
    for one in cards:
        try:
            stored.append(store_fit(one, settings, out_dir, actor=operator_actor()))
        except (FileExistsError, OSError, ValueError, CardError) as exc:
            raise fail(str(exc)) from None
    result = {"method": method, "base": base_name, "cards": [ref.label for ref in stored],
              "folders": [str(ref.folder) for ref in stored], "weights": report.weights[method],
              "validation_nll": validation, "validation_nll_base": -_log_ppl(report.ppl_base),
              "validation_nll_equal_weights": -_log_ppl(report.ppl_equal_weights),
              "fit_tokens": report.fit_tokens, "validation_tokens": report.tokens}
    if as_json:
        print(json.dumps(result))
        return
    out.print(f"fitted {method} fusion of {', '.join(report.cards)} on {base_name}: validation NLL "
              f"{validation:.4f} (base alone {result['validation_nll_base']:.4f}, equal weights "
              f"{result['validation_nll_equal_weights']:.4f}) over {report.tokens} tokens")
    for ref in stored:
        out.print(f"new card version {ref.label} in {ref.folder}")


def _store_contrastive(base: str, cards, out_dir: Path | None, as_json: bool) -> None:
    """Contrastive decoding has nothing to fit (it is a decoding rule, not a language model whose
    perplexity could be minimised): the paper's beta and plausibility threshold are stored, after
    checking the fusion can be set up, so `fusion:<base>+<card>` decodes contrastively."""
    from api.card_registry import operator_actor
    from experts.errors import CardError
    from experts.fusion.cards import store_fit
    from experts.fusion.combine import FusionParams
    from experts.fusion.evaluate import settings_from
    from experts.fusion.fused import FusedModel

    try:
        FusedModel(base, cards).anti_roles()
        settings = settings_from(FusionParams("contrastive"), base, cards, "defaults (Li et al. 2023)", None)
        stored = [store_fit(one, settings, out_dir, actor=operator_actor()) for one in cards]
    except (FileExistsError, OSError, ValueError, CardError) as exc:
        raise fail(str(exc)) from None
    result = {"method": "contrastive", "base": base, "cards": [ref.label for ref in stored],
              "folders": [str(ref.folder) for ref in stored], "weights": describe_params(settings)}
    if as_json:
        print(json.dumps(result))
        return
    for ref in stored:
        out.print(f"new card version {ref.label} in {ref.folder}: contrastive decoding on {base}")


def describe_params(settings) -> dict:
    return settings.model_dump(exclude_none=True, include={"beta", "plausibility"})


def _log_ppl(ppl: float) -> float:
    import math

    return -math.log(ppl)


@app.command("generate")
def generate_command(
    prompt: str = typer.Argument(..., help="The user message."),
    card: list[str] = typer.Option(None, "--card", help="Card folder; repeat for several experts."),
    base: str = typer.Option(None, help="Base model (default: the cards' base)."),
    method: str = typer.Option(None, help=f"{METHODS_HELP} (default: the card's fitted rule, else mixture)"),
    max_tokens: int = typer.Option(128),
    temperature: float = typer.Option(0.0),
) -> None:
    """Stream a fused chat answer to stdout."""
    from experts.fusion.service import FusionError, load_decoder
    from rag.runtime.sampling import SamplingOptions

    try:
        decoder = load_decoder(_base(base, cards := _cards(card)), cards, method)
        prompts = [decoder.encode_chat([{"role": "user", "content": prompt}])]
        for _, delta in decoder.stream(prompts, SamplingOptions(max_tokens=max_tokens, temperature=temperature)):
            sys.stdout.write(delta)
            sys.stdout.flush()
    except (FusionError, ValueError) as exc:
        raise fail(str(exc)) from None
    sys.stdout.write("\n")
    stats = decoder.last_stats
    err.print(f"{stats.tokens} tokens, {stats.tokens_per_s:.1f} tokens/s, fusion overhead "
              f"{stats.overhead_ms_per_step:.2f} ms/step")
