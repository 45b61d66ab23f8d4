"""One card-training run end to end: corpus -> split -> blocks -> base score -> LoRA -> card score -> folder.

The CLI and the benchmark both call `train_card`, so the figures the benchmark reports are the ones
a user gets. The run is resumable: a checkpoint in `<out>/checkpoint` (kept until the card folder is
complete) carries the training state and the base's held-out score.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from experts.manifest import CardManifest, CardMetrics, HeldoutSplit, ModelSpec
from experts.models import load_base
from experts.training import checkpoint, lora
from experts.training.batches import Blocks, pack, spread, tokenize
from experts.training.card_writer import MANIFEST_FILE, describe_corpus, write_adapter, write_manifest
from experts.training.corpus import COLLECTION_PREFIX, Corpus, CorpusDocument, load_corpus, split_heldout
from experts.training.perplexity import NLL, heldout_nll
from experts.training.settings import DEFAULT_STEERS, TrainSettings

CHECKPOINT_DIR = "checkpoint"


class TrainingError(RuntimeError):
    """The run cannot go on; the message says what to do next."""


@dataclass
class TrainRequest:
    corpus: str
    name: str
    out: Path
    settings: TrainSettings
    owner: str = "local"
    kind: Literal["knowledge", "fusion", "both"] = "knowledge"
    version: str = "1"
    domain: str | None = None
    description: str | None = None
    home_root: Path | None = None
    resume: bool | None = None  # None: resume a matching checkpoint if there is one
    checkpoint_every: int = 10
    overwrite: bool = False  # replace a finished card already in `out`
    stop_after: int | None = None  # tests: stop after this many steps, as an interruption would
    steers: list[str] | None = None  # bases the card may steer besides its own (None: DEFAULT_STEERS)


class TrainReport(BaseModel):
    """What `mighty cards train --json` prints."""

    name: str
    version: str
    card_dir: str | None
    finished: bool
    base: str
    corpus: str
    corpus_sha256: str
    heldout_documents: int
    heldout_keys: list[str]
    train_documents: int
    heldout_tokens: int
    heldout_ppl_base: float
    heldout_ppl_card: float | None
    ppl_reduction: float | None  # 1 - card / base
    steps: int
    total_steps: int
    resumed_from: int
    train_tokens: int
    train_seconds: float
    train_tokens_per_s: float
    total_seconds: float


def train_card(request: TrainRequest, console: Console | None = None) -> TrainReport:
    began = time.perf_counter()
    console = console or Console(stderr=True)
    settings = request.settings
    _check_card_fields(request)
    corpus = load_corpus(request.corpus, request.home_root)
    heldout = split_heldout([document.key for document in corpus.documents], settings.heldout_fraction,
                            settings.seed)
    fingerprint = settings.fingerprint(corpus.sha256, heldout)
    checkpoint_dir = request.out / CHECKPOINT_DIR
    saved = _resume_point(checkpoint_dir, fingerprint, request.resume, console)
    if saved is None and (request.out / MANIFEST_FILE).exists() and not request.overwrite:
        raise TrainingError(f"{request.out} already holds a trained card; pick another --name or --out, "
                            "or pass --overwrite to replace it")
    loaded = load_base(settings.base, fresh=True)
    data = prepare(corpus, heldout, loaded.tokenizer, settings)
    train_docs, train_blocks, eval_blocks = data.train_documents, data.train_blocks, data.eval_blocks
    model = lora.attach_lora(loaded.model, settings)

    signature = _signature(settings.base, eval_blocks)
    if saved is not None and saved.scalars.get("eval_signature") == signature:
        base_nll = NLL(float(saved.scalars["base_nll"]), int(saved.scalars["base_tokens"]))
    else:
        with model.disable_adapter():
            base_nll = _score(model, eval_blocks, settings, "scoring the base on held-out text", console)
    extra = {"eval_signature": signature, "base_nll": base_nll.total, "base_tokens": base_nll.tokens}
    try:
        outcome = lora.train(model, train_blocks, settings, fingerprint, checkpoint_dir, request.checkpoint_every,
                             resume=saved is not None, console=console, extra=extra,
                             stop_after=request.stop_after)
    except KeyboardInterrupt:
        raise TrainingError(f"interrupted; run the same command again to resume from the last checkpoint in "
                            f"{checkpoint_dir}") from None

    report = dict(name=request.name, version=request.version, base=settings.base, corpus=_corpus_ref(request),
                  corpus_sha256=corpus.sha256, heldout_documents=len(heldout), heldout_keys=heldout,
                  train_documents=len(train_docs), heldout_tokens=base_nll.tokens,
                  heldout_ppl_base=base_nll.perplexity, steps=outcome.steps_done, total_steps=outcome.total_steps,
                  resumed_from=outcome.resumed_from, train_tokens=outcome.train_tokens,
                  train_seconds=round(outcome.train_seconds, 3),
                  train_tokens_per_s=round(outcome.train_tokens / max(outcome.train_seconds, 1e-9), 2))
    if not outcome.finished:
        return TrainReport(**report, card_dir=None, finished=False, heldout_ppl_card=None, ppl_reduction=None,
                           total_seconds=round(time.perf_counter() - began, 3))

    write_adapter(model, request.out, settings.base)
    merged = model.merge_and_unload()
    card_nll = _score(merged, eval_blocks, settings, "scoring the card on held-out text", console)
    manifest = _manifest(request, corpus, heldout, train_docs, base_nll, card_nll, outcome)
    write_manifest(manifest, request.out)
    checkpoint.clear(checkpoint_dir)  # the card is complete; its training state is no longer needed
    return TrainReport(**report, card_dir=str(request.out), finished=True, heldout_ppl_card=card_nll.perplexity,
                       ppl_reduction=1 - card_nll.perplexity / base_nll.perplexity,
                       total_seconds=round(time.perf_counter() - began, 3))


@dataclass
class Prepared:
    train_documents: list[CorpusDocument]
    train_blocks: Blocks
    eval_blocks: Blocks  # the held-out rows that are scored (an even spread when capped)


def prepare(corpus: Corpus, heldout: list[str], tokenizer, settings: TrainSettings) -> Prepared:
    """Tokenize and pack each split on its own, so no block holds text of both."""
    held = set(heldout)
    train_docs = [document for document in corpus.documents if document.key not in held]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_blocks = pack(tokenize(tokenizer, [d.text for d in train_docs]), settings.block_size, pad, keep_tail=False)
    held_texts = [d.text for d in corpus.documents if d.key in held]
    eval_blocks = spread(pack(tokenize(tokenizer, held_texts), settings.block_size, pad, keep_tail=True),
                         settings.eval_tokens)
    return Prepared(train_docs, train_blocks, eval_blocks)


def _resume_point(folder: Path, fingerprint: str, resume: bool | None, console: Console):
    """The checkpoint to resume from, after applying --resume / --no-resume."""
    saved = checkpoint.peek(folder)
    if resume is False or (saved is not None and saved.fingerprint != fingerprint):
        if saved is not None and resume is not False:
            console.print(f"[yellow]note:[/] the checkpoint in {folder} was made with other settings or another "
                          "corpus; starting afresh")
        if resume is True:
            raise TrainingError(f"--resume: the checkpoint in {folder} was made with other settings or another "
                                "corpus; run the original command again, or drop --resume to start afresh")
        checkpoint.clear(folder)
        return None
    if saved is None and resume is True:
        raise TrainingError(f"--resume: no checkpoint in {folder}; drop --resume to start training")
    if saved is not None:
        console.print(f"resuming from the checkpoint at step {saved.step} in {folder}")
    return saved


def _check_card_fields(request: TrainRequest) -> None:
    """Refuse a name, version, owner, domain or description the manifest would reject, before training
    rather than after ten minutes of it."""
    try:
        CardManifest(name=request.name, version=request.version, owner=request.owner, kind=request.kind,
                     domain=request.domain or "-", description=request.description or "-",
                     model=ModelSpec(base=request.settings.base, adapter="adapter", steers=steers_for(request)))
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "card"
        raise TrainingError(f"{field}: {first['msg']}; fix the option and run again") from None


def _score(model, blocks: Blocks, settings: TrainSettings, label: str, console: Console) -> NLL:
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task(label, total=blocks.rows)
        return heldout_nll(model, blocks, settings.eval_batch, lambda rows: progress.advance(task, rows))


def _signature(base: str, blocks: Blocks) -> str:
    digest = hashlib.sha256(base.encode("utf-8"))
    digest.update(blocks.input_ids.numpy().tobytes())
    return digest.hexdigest()


def steers_for(request: TrainRequest) -> list[str]:
    steers = request.steers if request.steers is not None else DEFAULT_STEERS.get(request.settings.base, ())
    return [base for base in steers if base != request.settings.base]


def _corpus_ref(request: TrainRequest) -> str:
    if request.corpus.startswith(COLLECTION_PREFIX):
        return request.corpus
    return str(Path(request.corpus).expanduser().resolve())


def _manifest(request: TrainRequest, corpus, heldout: list[str], train_docs, base_nll: NLL, card_nll: NLL,
              outcome: lora.TrainOutcome) -> CardManifest:
    settings = request.settings
    training = {key: value for key, value in settings.model_dump(mode="json").items() if value is not None}
    training["steps"] = outcome.total_steps
    return CardManifest(
        name=request.name, version=request.version, owner=request.owner, kind=request.kind,
        domain=request.domain or corpus.name,
        description=request.description or describe_corpus(corpus, [d.key for d in train_docs]),
        model=ModelSpec(base=settings.base, adapter="adapter", steers=steers_for(request)),
        collection=request.corpus[len(COLLECTION_PREFIX):] if request.corpus.startswith(COLLECTION_PREFIX) else None,
        heldout=HeldoutSplit(corpus=_corpus_ref(request), corpus_sha256=corpus.sha256, key=corpus.key,
                             seed=settings.seed, documents=heldout),
        metrics=CardMetrics(heldout_ppl_base=round(base_nll.perplexity, 4), heldout_ppl_card=round(card_nll.perplexity, 4),
                            train_seconds=round(outcome.train_seconds, 2), train_tokens=outcome.train_tokens,
                            train_tokens_per_s=round(outcome.train_tokens / max(outcome.train_seconds, 1e-9), 2),
                            steps=outcome.total_steps, heldout_tokens=base_nll.tokens,
                            measured_at=datetime.now(timezone.utc).replace(microsecond=0)),
        training=training)
