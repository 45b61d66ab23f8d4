"""Forward passes for fusion: each engine runs one or more models ("roles") with their own KV caches.

`PlainEngine` is one model. `LoraRowsEngine` is a base model with several unmerged LoRA cards: the
batch is repeated once per role and each copy of the rows runs through the base weights plus its own
adapter (peft's mixed-adapter batches; role 0 is the bare base). Small models on a CPU are bound by
reading their weights, not by arithmetic, so running base and experts as rows of one batch costs
little more than the base alone, where separate merged copies would cost a full pass each. Each
role still has its own rows of the KV cache.

Prompts are left-padded: a padded position is masked out and positions count real tokens only, so
a row's result does not depend on the other prompts in the batch (up to float rounding).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from experts.models import ModelLoadError, load_base

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass
class EngineState:
    """One generation's cache and masks for one engine (engines themselves are shared and stateless)."""

    past: Any
    attention_mask: torch.Tensor  # [B, L] for the B prompt rows (repeated per role on the way in)
    positions: torch.Tensor  # [B] position id of the next token


class Engine:
    """K roles computed by one forward pass: logits come back as [K, B, ..., vocab]."""

    label: str
    roles: int = 1
    model: Any

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, past: Any,
                 cache: bool = True) -> Any:
        raise NotImplementedError

    def _split(self, logits: torch.Tensor, rows: int) -> torch.Tensor:
        return logits.view(self.roles, rows, *logits.shape[1:])

    def width(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, EngineState]:
        """Run left-padded prompts [B, L]; the last position's logits [K, B, V] and the state to go on."""
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        out = self._forward(ids, mask, positions, None)
        state = EngineState(out.past_key_values, mask, positions[:, -1] + 1)
        return self._split(out.logits[:, -1], ids.shape[0]), state

    def step(self, state: EngineState, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row [B]; the next logits [K, B, V]."""
        rows = tokens.shape[0]
        state.attention_mask = torch.cat([state.attention_mask, state.attention_mask.new_ones(rows, 1)], dim=1)
        out = self._forward(tokens.view(rows, 1), state.attention_mask, state.positions.view(rows, 1), state.past)
        state.past = out.past_key_values
        state.positions = state.positions + 1
        return self._split(out.logits[:, -1], rows)

    def score(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits for every position [K, B, L, V] (no cache kept)."""
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        return self._split(self._forward(ids, mask, positions, None, cache=False).logits, ids.shape[0])


class PlainEngine(Engine):
    """One model: a base, a merged LoRA card, a full card, or an anti-expert."""

    def __init__(self, label: str, model: Any) -> None:
        self.label, self.model, self.roles = label, model, 1

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, past: Any,
                 cache: bool = True) -> Any:
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past,
                          use_cache=cache)


class LoraRowsEngine(Engine):
    """A base plus LoRA cards, each a role computed as rows of one batch (role 0 is the bare base)."""

    def __init__(self, base: str, adapters: list[tuple[str, Path]]) -> None:
        from peft import PeftModel

        if not adapters:
            raise ValueError("LoraRowsEngine needs at least one adapter; use PlainEngine for a bare base")
        self.label = "+".join([base, *[label for label, _ in adapters]])
        model = load_base(base, fresh=True).model  # peft wraps layers in place: never the shared copy
        self.names = [BASE_ADAPTER]
        try:
            for index, (label, folder) in enumerate(adapters):
                name = f"card{index}"
                if index == 0:
                    model = PeftModel.from_pretrained(model, str(folder), adapter_name=name, is_trainable=False)
                else:
                    model.load_adapter(str(folder), adapter_name=name, is_trainable=False)
                self.names.append(name)
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            raise ModelLoadError(f"adapter {folder} does not load on base {base!r}: {error}") from error
        model.eval()
        self.model, self.roles = model, len(self.names)

    def width(self) -> int:
        return int(self.model.get_base_model().get_output_embeddings().weight.shape[0])

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, past: Any,
                 cache: bool = True) -> Any:
        rows = ids.shape[0]
        repeat = (self.roles, *[1] * (ids.dim() - 1))
        return self.model(input_ids=ids.repeat(*repeat), attention_mask=mask.repeat(self.roles, 1),
                          position_ids=positions.repeat(*repeat), past_key_values=past, use_cache=cache,
                          adapter_names=[name for name in self.names for _ in range(rows)])
