"""Teacher-forced scoring: what every fusion rule would have predicted for each token of some text.

One pass runs every model over the text. Rules whose NLL depends only on each model's probability of
the true token (mixture, entropy, learned) need just that and a few entropy features per token, a
few floats, so their weights can be fitted afterwards without running the models again. Rules that
renormalise over the vocabulary (product, proxy) are evaluated during the pass at each value of a
small parameter grid, and the best value is chosen on the fitting tokens.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from experts.fusion.combine import default_weights, features, product, proxy
from experts.fusion.fused import FusedModel

PRODUCT_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # experts' share of the product weight
PROXY_GRID = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)  # proxy-tuning alpha


@dataclass
class TokenTable:
    """Per scored token: each model's log-prob of the true token, gate features, grid NLLs."""

    target: torch.Tensor  # [M, T] log p_m(token), base first
    features: torch.Tensor  # [T, F]
    product_nll: torch.Tensor  # [len(PRODUCT_GRID), T]
    proxy_nll: torch.Tensor  # [len(PROXY_GRID), T]
    seconds: float = 0.0
    anti_target: torch.Tensor | None = None  # [n, T] log p of each card's untuned base (the anti-experts)

    @property
    def tokens(self) -> int:
        return int(self.target.shape[1])


def windows(model: FusedModel, texts: list[str], length: int, max_tokens: int | None) -> list[list[int]]:
    """Token windows of at most `length` (each scored from its own start), up to `max_tokens` in all."""
    out, total = [], 0
    for text in texts:
        ids = model.tokenizer(text)["input_ids"]
        for start in range(0, len(ids), length):
            window = ids[start:start + length]
            if len(window) < 2:
                continue
            if max_tokens is not None and total + len(window) - 1 > max_tokens:
                window = window[:max_tokens - total + 1]
                if len(window) >= 2:
                    out.append(window)
                return out
            out.append(window)
            total += len(window) - 1
    return out


def score(model: FusedModel, texts: list[str], length: int = 256, batch: int = 1, max_tokens: int | None = None,
          advance: Callable[[int], None] | None = None) -> TokenTable:
    """Score texts with every model at once; `advance(n)` is told as n more tokens are done."""
    import time

    started = time.perf_counter()
    chunks = windows(model, texts, length, max_tokens)
    experts = len(model.cards)
    parts: dict[str, list[torch.Tensor]] = {"target": [], "features": [], "product": [], "proxy": [], "anti": []}
    for first in range(0, len(chunks), batch):  # windows run one at a time (one KV cache per model)
        for chunk in chunks[first:first + batch]:
            ids = torch.tensor([chunk])
            mask = torch.ones_like(ids)
            logprobs, anti = model.score(chunk, anti=experts > 0)
            logprobs = logprobs.unsqueeze(1)
            anti = anti.unsqueeze(1) if anti is not None else None
            valid = mask[:, 1:].bool()  # position t predicts token t + 1
            targets = ids[:, 1:].unsqueeze(-1)
            lp = logprobs[:, :, :-1]

            def pick(dist: torch.Tensor) -> torch.Tensor:  # [B, L-1, V] -> NLL of valid tokens [N]
                return -dist.gather(-1, targets).squeeze(-1)[valid]

            parts["target"].append(torch.stack([-pick(lp[m]) for m in range(lp.shape[0])]))
            parts["features"].append(features(lp)[valid])
            if experts:
                parts["product"].append(torch.stack([
                    pick(product(lp, torch.tensor(default_weights(experts, share)))) for share in PRODUCT_GRID]))
                parts["proxy"].append(torch.stack([pick(proxy(lp, anti[:, :, :-1], alpha)) for alpha in PROXY_GRID]))
                parts["anti"].append(torch.stack([-pick(anti[m, :, :-1]) for m in range(anti.shape[0])]))
            if advance is not None:
                advance(int(valid.sum()))
    if not parts["target"]:
        raise ValueError("nothing to score: the texts have fewer than two tokens")
    empty = torch.zeros(0, sum(p.shape[1] for p in parts["target"]))
    return TokenTable(torch.cat(parts["target"], 1), torch.cat(parts["features"], 0),
                      torch.cat(parts["product"], 1) if experts else empty,
                      torch.cat(parts["proxy"], 1) if experts else empty, time.perf_counter() - started,
                      torch.cat(parts["anti"], 1) if experts else None)
