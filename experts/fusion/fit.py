"""Fitting fusion parameters by minimising NLL on held-out tokens (CombLM's recipe).

Everything here works on a TokenTable (a few floats per token), so fitting takes seconds after the
one scoring pass. `learned` fits one scalar per model plus a small gate on entropy features, with
early stopping on the last fifth of the fitting tokens so a few documents cannot be memorised.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from experts.fusion.combine import FusionParams, Gate, default_weights, feature_count
from experts.fusion.scoring import PRODUCT_GRID, PROXY_GRID, TokenTable

GATE_HIDDEN = 8


def mixture_nll(target: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """Per-token NLL of a mixture; log_weights is [M] or per token [M, T]."""
    if log_weights.dim() == 1:
        log_weights = log_weights.unsqueeze(-1)
    return -torch.logsumexp(target + log_weights, dim=0)


def entropy_log_weights(table: TokenTable, temperature: torch.Tensor | float) -> torch.Tensor:
    models = table.target.shape[0]
    entropies = table.features[:, :models].T  # [M, T]
    return torch.log_softmax(-entropies / temperature, dim=0)


def table_nll(table: TokenTable, params: FusionParams) -> float:
    """Mean NLL per token of one rule (with its parameters) over a table."""
    models = table.target.shape[0]
    if models == 1:
        return float(-table.target[0].mean())
    if params.method in ("product", "proxy"):
        value = params.alpha if params.method == "proxy" else 1.0 - params.normalised_weights(models)[0].item()
        grid = PROXY_GRID if params.method == "proxy" else PRODUCT_GRID
        rows = table.proxy_nll if params.method == "proxy" else table.product_nll
        index = min(range(len(grid)), key=lambda i: abs(grid[i] - value))
        if abs(grid[index] - value) > 1e-6:
            raise ValueError(f"{params.method} was scored on the grid {grid}, not at {value:g}")
        return float(rows[index].mean())
    prior = params.normalised_weights(models).log()
    if params.method == "mixture":
        return float(mixture_nll(table.target, prior).mean())
    if params.method == "entropy":
        log_weights = torch.log_softmax(prior.unsqueeze(-1) + entropy_log_weights(table, params.temperature), 0)
        return float(mixture_nll(table.target, log_weights).mean())
    log_weights = torch.log_softmax(prior + params.gate.logits(table.features), dim=-1).T
    return float(mixture_nll(table.target, log_weights).mean())


def _minimise(loss, parameters: list[torch.Tensor], steps: int = 200, lr: float = 0.05,
              stop_loss=None) -> None:
    """Adam on a full-batch loss; with stop_loss, keep the parameters that did best on it."""
    optimiser = torch.optim.Adam(parameters, lr=lr)
    best, kept = float("inf"), [p.detach().clone() for p in parameters]
    for _ in range(steps):
        optimiser.zero_grad()
        value = loss()
        value.backward()
        optimiser.step()
        if stop_loss is not None:
            with torch.no_grad():
                check = float(stop_loss())
            if check < best:
                best, kept = check, [p.detach().clone() for p in parameters]
    if stop_loss is not None:
        with torch.no_grad():
            for parameter, value in zip(parameters, kept):
                parameter.copy_(value)


def fit_mixture(table: TokenTable) -> FusionParams:
    theta = torch.zeros(table.target.shape[0], requires_grad=True)
    with torch.enable_grad():
        _minimise(lambda: mixture_nll(table.target, torch.log_softmax(theta, 0)).mean(), [theta], steps=300)
    return FusionParams("mixture", tuple(torch.softmax(theta.detach(), 0).tolist()))


def fit_entropy(table: TokenTable) -> FusionParams:
    log_t = torch.zeros((), requires_grad=True)
    with torch.enable_grad():
        _minimise(lambda: mixture_nll(table.target, entropy_log_weights(table, log_t.exp())).mean(), [log_t],
                  steps=200)
    return FusionParams("entropy", None, temperature=float(log_t.detach().exp()))


def fit_grid(table: TokenTable, method: str) -> FusionParams:
    experts = table.target.shape[0] - 1
    rows = table.proxy_nll if method == "proxy" else table.product_nll
    best = int(rows.mean(1).argmin())
    if method == "proxy":
        return FusionParams("proxy", alpha=PROXY_GRID[best])
    return FusionParams("product", default_weights(experts, PRODUCT_GRID[best]))


def fit_learned(table: TokenTable, start: FusionParams | None = None, seed: int = 0) -> FusionParams:
    """Scalars (started from the fitted mixture) plus a tanh gate on standardised entropy features."""
    models, tokens = table.target.shape
    start = start or fit_mixture(table)
    cut = max(1, int(tokens * 0.8)) if tokens >= 10 else tokens
    train, check = slice(0, cut), slice(cut, tokens) if cut < tokens else slice(0, tokens)
    feats = table.features
    mean, std = feats[train].mean(0), feats[train].std(0).clamp_min(1e-3)
    generator = torch.Generator().manual_seed(seed)
    theta = start.normalised_weights(models).log().requires_grad_(True)
    w1 = (torch.randn(GATE_HIDDEN, feature_count(models), generator=generator) * 0.3).requires_grad_(True)
    b1 = torch.zeros(GATE_HIDDEN, requires_grad=True)
    w2 = torch.zeros(models, GATE_HIDDEN, requires_grad=True)

    def nll(part: slice) -> torch.Tensor:
        gate = Gate(w1, b1, w2, mean, std)
        log_weights = torch.log_softmax(theta + gate.logits(feats[part]), dim=-1).T
        return mixture_nll(table.target[:, part], log_weights).mean()

    with torch.enable_grad():
        _minimise(lambda: nll(train) + 1e-4 * (w1.pow(2).sum() + w2.pow(2).sum()), [theta, w1, b1, w2],
                  steps=400, lr=0.03, stop_loss=lambda: nll(check))
    gate = Gate(w1.detach(), b1.detach(), w2.detach(), mean, std)
    return FusionParams("learned", tuple(torch.softmax(theta.detach(), 0).tolist()), gate=gate)


@dataclass
class FitReport:
    params: dict[str, FusionParams]  # method -> fitted parameters
    fit_nll: dict[str, float]


def fit_all(table: TokenTable) -> FitReport:
    """Fitted parameters for every rule (product and proxy chosen on their grids)."""
    mixture = fit_mixture(table)
    params = {"mixture": mixture, "product": fit_grid(table, "product"), "proxy": fit_grid(table, "proxy"),
              "entropy": fit_entropy(table), "learned": fit_learned(table, mixture)}
    return FitReport(params, {method: table_nll(table, p) for method, p in params.items()})
