"""Fusion rules: pure functions from per-model next-token log-probabilities to one distribution.

Every rule takes `logprobs` shaped [M, B, V]: model 0 is the base, models 1.. are the experts, each
row already log-softmaxed over the shared vocabulary. Proxy-tuning also takes the anti-experts'
log-probs [M-1, B, V] (each expert's untuned base). The result is a normalised [B, V] log-prob.
Contrastive decoding (Li et al. 2023) is a decoding rule rather than a language model: the base is
the expert, the anti-experts (untuned small models) the amateur, and tokens outside the plausibility
set get probability zero, so it is used to pick tokens, never to score perplexity.

Working in log-probs rather than raw logits changes nothing for proxy and product (softmax removes
any per-row constant), and it makes the mixture exact: with weights (1, 0) `logsumexp` returns the
base row bit for bit, which the exactness tests rely on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

METHODS = ("mixture", "product", "proxy", "entropy", "learned", "contrastive")
ANTI_METHODS = ("proxy", "contrastive")  # rules that need each card's untuned base (the anti-expert / amateur)
CD_BETA = 0.5  # contrastive decoding: amateur penalty (Li et al. 2023)
CD_PLAUSIBILITY = 0.1  # contrastive decoding: keep tokens with p_large >= this x max p_large


@dataclass(frozen=True)
class Gate:
    """CombLM-style gate: per-token model weights from entropy features through a small MLP.

    weights_t = softmax(log(prior) + w2 @ tanh(w1 @ standardise(f_t) + b1)), f_t = features(t).
    """

    w1: torch.Tensor  # [H, F]
    b1: torch.Tensor  # [H]
    w2: torch.Tensor  # [M, H]
    mean: torch.Tensor  # [F]
    std: torch.Tensor  # [F]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Per-model weight logits [..., M] for features [..., F] (prior not included)."""
        hidden = torch.tanh(((features - self.mean) / self.std) @ self.w1.T + self.b1)
        return hidden @ self.w2.T

    def to_lists(self) -> dict[str, list[float]]:
        """Flat lists for the manifest (shapes follow from the lengths of b1, mean and the weights)."""
        return {"w1": self.w1.flatten().tolist(), "b1": self.b1.tolist(), "w2": self.w2.flatten().tolist(),
                "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_lists(cls, data: dict[str, list[float]], models: int) -> "Gate":
        try:
            hidden, features = len(data["b1"]), len(data["mean"])
            gate = cls(torch.tensor(data["w1"]).reshape(hidden, features), torch.tensor(data["b1"]),
                       torch.tensor(data["w2"]).reshape(models, hidden), torch.tensor(data["mean"]),
                       torch.tensor(data["std"]))
        except (KeyError, RuntimeError, TypeError) as error:
            raise ValueError(f"fusion.gate does not describe a gate for {models} models ({error}); refit it "
                             "with `mighty fusion fit`") from None
        if features != feature_count(models):
            raise ValueError(f"fusion.gate was fitted for {features // 2} models, not {models}; refit it")
        return gate


@dataclass(frozen=True)
class FusionParams:
    """One rule with its parameters. `weights` are per model, base first, and are normalised to sum 1."""

    method: str = "mixture"
    weights: tuple[float, ...] | None = None
    alpha: float = 1.0  # proxy strength
    temperature: float = 1.0  # entropy rule: lower trusts the more certain model more sharply
    gate: Gate | None = field(default=None, compare=False)
    beta: float = CD_BETA  # contrastive: log p_base - beta * log p_amateur
    plausibility: float = CD_PLAUSIBILITY  # contrastive: the adaptive plausibility threshold (paper's alpha)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown fusion method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.weights is not None and (any(w < 0 for w in self.weights) or sum(self.weights) <= 0):
            raise ValueError(f"fusion weights must be non-negative and not all zero, got {list(self.weights)}")
        if self.temperature <= 0:
            raise ValueError("the entropy temperature must be positive")
        if self.beta < 0 or not 0 < self.plausibility <= 1:
            raise ValueError("contrastive decoding needs beta >= 0 and a plausibility threshold in (0, 1]")
        if self.method == "learned" and self.gate is None:
            raise ValueError("the learned method needs a fitted gate: run `mighty fusion fit --method learned`")

    def normalised_weights(self, models: int) -> torch.Tensor:
        if self.weights is None:
            return torch.full((models,), 1.0 / models)
        if len(self.weights) != models:
            raise ValueError(f"{len(self.weights)} fusion weights given for {models} models (base first)")
        weights = torch.tensor(self.weights, dtype=torch.float32)
        return weights / weights.sum()


def entropy(logprobs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) over the last dimension; -inf entries (banned tokens) contribute 0."""
    return -(logprobs.exp() * logprobs.clamp_min(-1e30)).sum(-1)


def feature_count(models: int) -> int:
    return 2 * models


def features(logprobs: torch.Tensor) -> torch.Tensor:
    """Gate features [..., 2M] from log-probs [M, ..., V]: each model's entropy and top log-prob."""
    parts = [entropy(logprobs), logprobs.max(-1).values]
    return torch.cat([p.movedim(0, -1) for p in parts], dim=-1)


def mixture(logprobs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """log(sum_i w_i p_i). `weights` is [M] or per row [M, B]; zero weights drop a model exactly."""
    log_w = weights.log()
    while log_w.dim() < logprobs.dim():
        log_w = log_w.unsqueeze(-1)
    return torch.logsumexp(logprobs + log_w, dim=0)


def product(logprobs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Normalised product of experts: log_softmax(sum_i w_i log p_i)."""
    return torch.log_softmax((logprobs * weights.view(-1, *[1] * (logprobs.dim() - 1))).sum(0), dim=-1)


def proxy(logprobs: torch.Tensor, anti: torch.Tensor, alpha: float) -> torch.Tensor:
    """Proxy-tuning: base + alpha * sum_i (expert_i - anti_expert_i), renormalised."""
    return torch.log_softmax(logprobs[0] + alpha * (logprobs[1:] - anti).sum(0), dim=-1)


def contrastive(expert: torch.Tensor, amateur: torch.Tensor, beta: float, plausibility: float) -> torch.Tensor:
    """Contrastive decoding: log p_expert - beta * log p_amateur over the plausible tokens (those with
    p_expert >= plausibility x max p_expert), renormalised; every other token gets -inf. The expert's
    top token is always plausible, so the result is never empty."""
    cutoff = expert.max(-1, keepdim=True).values + math.log(plausibility)
    scores = (expert - beta * amateur).masked_fill(expert < cutoff, float("-inf"))
    return torch.log_softmax(scores, dim=-1)


def entropy_weights(logprobs: torch.Tensor, prior: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row weights [M, B]: softmax over models of log(prior) - entropy / temperature."""
    scores = prior.log().unsqueeze(-1) - entropy(logprobs) / temperature
    return torch.softmax(scores, dim=0)


def gate_weights(logprobs: torch.Tensor, prior: torch.Tensor, gate: Gate) -> torch.Tensor:
    """Per-row weights [M, B] from the learned gate."""
    scores = prior.log() + gate.logits(features(logprobs))  # [B, M]
    return torch.softmax(scores, dim=-1).T


def fuse(logprobs: torch.Tensor, params: FusionParams, anti: torch.Tensor | None = None) -> torch.Tensor:
    """The fused next-token log-probs [B, V] for log-probs [M, B, V] (base first)."""
    return fuse_with_weights(logprobs, params, anti)[0]


def fuse_with_weights(logprobs: torch.Tensor, params: FusionParams, anti: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fused log-probs and the weights applied per row [M, B] (None for proxy, which has no weights)."""
    models = logprobs.shape[0]
    if params.method == "proxy":
        if models > 1 and anti is None:
            raise ValueError("proxy fusion needs the anti-experts' log-probs")
        return (proxy(logprobs, anti, params.alpha) if models > 1 else logprobs[0]), None
    if params.method == "contrastive":
        if anti is None:
            raise ValueError("contrastive decoding needs the amateur's (the cards' untuned base's) log-probs")
        return contrastive(logprobs[0], anti.mean(0), params.beta, params.plausibility), None
    weights = params.normalised_weights(models)
    if params.method == "mixture":
        return mixture(logprobs, weights), weights.unsqueeze(-1).expand(models, logprobs.shape[1])
    if params.method == "product":
        return product(logprobs, weights), weights.unsqueeze(-1).expand(models, logprobs.shape[1])
    if params.method == "entropy":
        weights = entropy_weights(logprobs, weights, params.temperature)
    else:
        weights = gate_weights(logprobs, weights, params.gate)
    return mixture(logprobs, weights), weights


def default_weights(experts: int, expert_share: float = 0.3) -> tuple[float, ...]:
    """Base keeps 1 - share; experts split the share (the roadmap's 'base in charge of fluency')."""
    if experts == 0:
        return (1.0,)
    return (1.0 - expert_share, *[expert_share / experts] * experts)
