"""Resumable training state in safetensors + JSON only (nothing is ever unpickled).

A checkpoint is two files: `step-NNNNNN.safetensors` (LoRA weights, AdamW moments and step counters,
the torch RNG state) and `latest.json` (step, scalars, the settings fingerprint, which tensors file
is current). The tensors are written aside and renamed into place first; replacing `latest.json`
is the commit point, so a kill at any moment leaves either the previous checkpoint or the new one,
and older tensor files are removed only after the new commit.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from indexes.durable import atomic_write_text, fsync_path

LATEST = "latest.json"
FORMAT = 1


@dataclass
class Checkpoint:
    step: int
    fingerprint: str
    tensors: dict[str, torch.Tensor]
    scalars: dict[str, Any] = field(default_factory=dict)


def trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """Trainable parameters in a fixed order (by name), the order the optimizer is built with."""
    return sorted(((name, p) for name, p in model.named_parameters() if p.requires_grad), key=lambda item: item[0])


def capture(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Flatten weights, AdamW state and RNG into named tensors."""
    tensors: dict[str, torch.Tensor] = {"rng/torch": torch.get_rng_state()}
    for name, param in trainable(model):
        tensors[f"param/{name}"] = param.detach()
        for key, value in optimizer.state.get(param, {}).items():
            if isinstance(value, torch.Tensor):
                tensors[f"{key}/{name}"] = value.detach()
    return {name: tensor.contiguous().clone() for name, tensor in tensors.items()}


def restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Put captured tensors back; a missing or misshapen tensor means the checkpoint belongs to another run."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        kind, _, name = key.partition("/")
        grouped.setdefault(name, {})[kind] = value
    with torch.no_grad():
        for name, param in trainable(model):
            entry = dict(grouped.get(name, {}))
            saved = entry.pop("param", None)
            if saved is None or saved.shape != param.shape:
                raise ValueError(f"checkpoint has no matching weights for {name}")
            param.copy_(saved)
            if entry:
                optimizer.state[param] = {key: value.clone() for key, value in entry.items()}
    torch.set_rng_state(tensors["rng/torch"])


def save(folder: Path, step: int, fingerprint: str, tensors: dict[str, torch.Tensor],
         scalars: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}.safetensors"
    temporary = folder / f".{name}.tmp-{os.getpid()}"
    save_file(tensors, str(temporary), metadata={"format": str(FORMAT)})
    fsync_path(temporary)
    os.replace(temporary, folder / name)
    record = {"format": FORMAT, "step": step, "fingerprint": fingerprint, "tensors": name, "scalars": scalars}
    atomic_write_text(folder / LATEST, json.dumps(record, indent=2))
    for old in folder.glob("step-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    for stray in folder.glob(".step-*.tmp-*"):
        stray.unlink(missing_ok=True)


def load(folder: Path) -> Checkpoint | None:
    """The committed checkpoint in `folder`, or None when there is none (or it is unreadable)."""
    try:
        record = json.loads((folder / LATEST).read_text(encoding="utf-8"))
        if record.get("format") != FORMAT:
            return None
        tensors = load_file(str(folder / record["tensors"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Checkpoint(int(record["step"]), str(record["fingerprint"]), tensors, dict(record.get("scalars", {})))


def peek(folder: Path) -> Checkpoint | None:
    """The committed checkpoint's step, fingerprint and scalars, without reading its tensors."""
    try:
        record = json.loads((folder / LATEST).read_text(encoding="utf-8"))
        return Checkpoint(int(record["step"]), str(record["fingerprint"]), {}, dict(record.get("scalars", {})))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clear(folder: Path) -> None:
    """Remove the checkpoint files (only those: the folder may be a user's) and the folder if then empty."""
    for path in [folder / LATEST, *folder.glob("step-*.safetensors"), *folder.glob(".step-*.tmp-*")]:
        path.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass  # missing, or holds files that are not ours
