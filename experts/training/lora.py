"""The LoRA training loop: peft adapters on a frozen base, AdamW, warmup + cosine, resumable.

Everything that decides the final weights is a function of the settings and the seed: the adapter's
initial values (torch seeded before peft draws them), the order of training blocks (a permutation per
epoch from a generator seeded with seed and epoch, so it never needs storing), and the learning rate
(a pure function of the step). A checkpoint therefore only carries the weights, AdamW's moments, the
step and the torch RNG state, and a resumed run ends on the same weights as an uninterrupted one.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from experts.training import checkpoint
from experts.training.batches import IGNORE, Blocks
from experts.training.perplexity import token_nll
from experts.training.settings import TrainSettings
from indexes.durable import failpoint

STOP_AFTER_ENV = "MIGHTY_TRAIN_STOP_AFTER"  # tests: end the run after N steps as if interrupted


@dataclass
class TrainOutcome:
    model: Any  # the peft model (adapter not merged)
    steps_done: int
    total_steps: int
    train_seconds: float  # summed over every run that contributed, excluding evaluation
    train_tokens: int
    resumed_from: int  # the step a checkpoint put us at (0: fresh start)
    finished: bool
    last_loss: float


def attach_lora(model: Any, settings: TrainSettings) -> Any:
    """Wrap the base with fresh adapters; the seed fixes LoRA's random A matrices."""
    from peft import LoraConfig, get_peft_model

    layers = None
    if settings.last_layers:  # None or 0: every layer
        count = int(model.config.num_hidden_layers)
        layers = list(range(max(0, count - settings.last_layers), count))
    config = LoraConfig(r=settings.rank, lora_alpha=settings.lora_alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.targets), layers_to_transform=layers, bias="none",
                        task_type="CAUSAL_LM")
    torch.manual_seed(settings.seed)
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        raise ValueError(f"cannot attach LoRA to this base ({error}); pick --targets among the base's "
                         "linear layers (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj "
                         "for Llama-like models)") from None


def learning_rate(settings: TrainSettings, step: int, total: int) -> float:
    """Linear warmup, then cosine decay to lr x min_lr_fraction (step counts from 0)."""
    warmup = int(settings.warmup_fraction * total)
    if step < warmup:
        return settings.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = settings.min_lr_fraction
    return settings.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def block_order(rows: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(rows, generator=generator)


def rows_for_step(rows: int, batch: int, seed: int, step: int) -> list[int]:
    """The training rows of one step; epochs roll over mid-step when the split is not a multiple."""
    picked, cache = [], {}
    for position in range(step * batch, (step + 1) * batch):
        epoch = position // rows
        if epoch not in cache:
            cache[epoch] = block_order(rows, seed, epoch)
        picked.append(int(cache[epoch][position % rows]))
    return picked


def train(model: Any, blocks: Blocks, settings: TrainSettings, fingerprint: str, checkpoint_dir: Path | None,
          checkpoint_every: int = 10, resume: bool = True, console: Console | None = None,
          stop_after: int | None = None, extra: dict[str, Any] | None = None) -> TrainOutcome:
    """Train `model` (already wrapped by `attach_lora`) on the training blocks; `extra` scalars are
    kept with every checkpoint (e.g. the base's held-out score, so a resumed run need not recompute it)."""
    if blocks.rows == 0:
        raise ValueError(f"the training split has fewer tokens than one block ({settings.block_size}); "
                         "use a smaller --block-size or a larger corpus")
    total = settings.total_steps(blocks.rows)
    params = [param for _, param in checkpoint.trainable(model)]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay, foreach=False)
    start, seconds, last_loss = 0, 0.0, float("nan")
    if resume and checkpoint_dir is not None:
        saved = checkpoint.load(checkpoint_dir)
        if saved is not None and saved.fingerprint == fingerprint and saved.step <= total:
            checkpoint.restore(model, optimizer, saved.tensors)
            start = saved.step
            seconds = float(saved.scalars.get("train_seconds", 0.0))
            last_loss = float(saved.scalars.get("last_loss", float("nan")))
    if stop_after is None and os.environ.get(STOP_AFTER_ENV):
        stop_after = int(os.environ[STOP_AFTER_ENV])
    tokens_per_step = settings.batch_size * settings.block_size
    micro = min(settings.micro_batch, settings.batch_size)
    model.train()
    step = start
    with _TrainingBar(console) as progress:
        task = progress.add_task("training", total=total, completed=start, loss=last_loss, rate=0.0)
        for step in range(start, total):
            began = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(settings, step, total)
            rows = rows_for_step(blocks.rows, settings.batch_size, settings.seed, step)
            last_loss = _accumulate(model, blocks.select(rows), micro)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - began
            seconds += elapsed
            progress.update(task, advance=1, loss=last_loss, rate=tokens_per_step / max(elapsed, 1e-9))
            done = step + 1
            if checkpoint_dir is not None and (done % checkpoint_every == 0 or done == total):
                checkpoint.save(checkpoint_dir, done, fingerprint, checkpoint.capture(model, optimizer),
                                {**(extra or {}), "train_seconds": seconds, "last_loss": last_loss,
                                 "total_steps": total})
                failpoint(f"train-checkpoint:{done}")
            if stop_after is not None and done - start >= stop_after and done < total:
                return TrainOutcome(model, done, total, seconds, done * tokens_per_step, start, False, last_loss)
    return TrainOutcome(model, total, total, seconds, total * tokens_per_step, start, True, last_loss)


def _accumulate(model: Any, batch: Blocks, micro: int) -> float:
    """Forward/backward in micro batches; the loss is the mean over every token of the whole step,
    so gradient accumulation gives the same update as one big batch."""
    labels = batch.labels
    count = int((labels[:, 1:] != IGNORE).sum())
    total = 0.0
    for start in range(0, batch.rows, micro):
        logits = model(input_ids=batch.input_ids[start:start + micro]).logits
        loss = token_nll(logits, labels[start:start + micro]).sum() / count
        loss.backward()
        total += float(loss.detach())
    return total


class _TrainingBar:
    """A rich bar on stderr with the step loss and tokens/s (silent when stderr is not a terminal)."""

    def __init__(self, console: Console | None) -> None:
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("{task.fields[rate]:.0f} tok/s"),
                             TimeElapsedColumn(), TimeRemainingColumn(),
                             console=console or Console(stderr=True), transient=False)

    def __enter__(self) -> Progress:
        self._bar.start()
        return self._bar

    def __exit__(self, *exc_info) -> None:
        self._bar.stop()
