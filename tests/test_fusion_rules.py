"""Fusion rules, sampling, fitting and model strings on small synthetic tensors (no model weights)."""
from __future__ import annotations

import math

import pytest
import torch

from experts.fusion.combine import FusionParams, Gate, entropy, features, fuse, mixture
from experts.fusion.fit import fit_entropy, fit_learned, fit_mixture, table_nll
from rag.runtime.sampling import SamplingOptions, choose, penalise_repeats, top_k_filter, top_p_filter
from experts.fusion.scoring import PRODUCT_GRID, PROXY_GRID, TokenTable
from experts.fusion.spec import FusionSpecError, parse_fusion_model


def logprobs(*rows: list[float]) -> torch.Tensor:
    """[M, 1, V] log-probs from unnormalised probability rows."""
    probs = torch.tensor(rows, dtype=torch.float32)
    return (probs / probs.sum(-1, keepdim=True)).log().unsqueeze(1)


def test_every_rule_returns_a_normalised_distribution():
    lp = logprobs([0.7, 0.2, 0.1], [0.1, 0.3, 0.6])
    anti = logprobs([0.3, 0.3, 0.4])
    gate = Gate(torch.randn(4, 4), torch.zeros(4), torch.randn(2, 4), torch.zeros(4), torch.ones(4))
    for params in (FusionParams("mixture", (0.3, 0.7)), FusionParams("product", (0.5, 0.5)),
                   FusionParams("proxy", alpha=1.5), FusionParams("entropy", temperature=0.5),
                   FusionParams("learned", (0.5, 0.5), gate=gate)):
        fused = fuse(lp, params, anti)
        assert fused.shape == (1, 3)
        assert math.isclose(float(fused.exp().sum()), 1.0, abs_tol=1e-6), params.method


def test_mixture_and_proxy_do_what_their_formulas_say():
    lp = logprobs([0.7, 0.2, 0.1], [0.1, 0.3, 0.6])
    assert torch.allclose(mixture(lp, torch.tensor([0.25, 0.75])).exp(),
                          torch.tensor([[0.25 * 0.7 + 0.75 * 0.1, 0.25 * 0.2 + 0.75 * 0.3, 0.25 * 0.1 + 0.75 * 0.6]]))
    anti = logprobs([0.1, 0.3, 0.6])  # the expert equals its anti-expert: proxy leaves the base alone
    assert torch.allclose(fuse(lp, FusionParams("proxy", alpha=2.0), anti), lp[0], atol=1e-6)


def test_entropy_rule_trusts_the_more_certain_model():
    lp = logprobs([0.98, 0.01, 0.01], [0.34, 0.33, 0.33])
    assert entropy(lp)[0, 0] < entropy(lp)[1, 0]
    fused = fuse(lp, FusionParams("entropy", temperature=0.2)).exp()[0]
    assert fused[0] > 0.9  # the confident base dominates the near-uniform expert
    assert features(lp).shape == (1, 4)


def test_bad_parameters_are_refused_with_reasons():
    with pytest.raises(ValueError, match="unknown fusion method"):
        FusionParams("average")
    with pytest.raises(ValueError, match="non-negative"):
        FusionParams("mixture", (1.0, -0.5))
    with pytest.raises(ValueError, match="mighty fusion fit"):
        FusionParams("learned")
    with pytest.raises(ValueError, match="3 fusion weights given for 2 models"):
        fuse(logprobs([1, 1], [1, 2]), FusionParams("mixture", (0.2, 0.3, 0.5)))


def test_sampling_filters_and_seeds():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(top_k_filter(scores, 2)[0, 2:]).all() and not torch.isinf(top_k_filter(scores, 2)[0, :2]).any()
    kept = ~torch.isinf(top_p_filter(scores, 0.75))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 + 0.3 reaches 0.75
    seen = torch.tensor([[True, False, False, False]])
    assert penalise_repeats(scores, seen, 1.5)[0, 0] == scores[0, 0] * 1.5
    options = SamplingOptions(temperature=1.0, seed=7)
    draws = [choose(scores.repeat(64, 1), options, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1]) and len(set(draws[0].tolist())) > 1
    assert int(choose(scores, SamplingOptions(), None)) == 0
    assert SamplingOptions(stop="\n").stop == ["\n"]


def synthetic_table(tokens: int = 400, seed: int = 0) -> TokenTable:
    """Model 1 is right when model 0 is unsure (high entropy) and wrong otherwise: a gate can learn that."""
    generator = torch.Generator().manual_seed(seed)
    unsure = torch.rand(tokens, generator=generator) < 0.5
    base = torch.where(unsure, torch.full((tokens,), -4.0), torch.full((tokens,), -0.5))
    expert = torch.where(unsure, torch.full((tokens,), -0.7), torch.full((tokens,), -5.0))
    entropies = torch.stack([torch.where(unsure, 3.0, 0.5), torch.full((tokens,), 1.5)], 1)
    entropies = entropies + 0.1 * torch.randn(tokens, 2, generator=generator)
    tops = torch.stack([-entropies[:, 0] / 4, -entropies[:, 1] / 4], 1)
    grid = torch.zeros(len(PRODUCT_GRID), tokens)
    return TokenTable(torch.stack([base, expert]), torch.cat([entropies, tops], 1), grid,
                      torch.zeros(len(PROXY_GRID), tokens))


def test_fitting_lowers_nll_and_the_gate_learns_when_to_trust_the_expert():
    fit, check = synthetic_table(seed=0), synthetic_table(seed=1)
    equal = table_nll(check, FusionParams("mixture", None))
    mixture_fit = fit_mixture(fit)
    learned = fit_learned(fit, mixture_fit)
    entropy_fit = fit_entropy(fit)
    assert table_nll(check, learned) < table_nll(check, mixture_fit) <= equal + 1e-6
    assert table_nll(check, entropy_fit) < equal
    assert table_nll(check, learned) < 0.5 * equal  # the gate picks the right model almost every time


def test_fusion_model_strings():
    spec = parse_fusion_model("fusion:smollm2-135m-instruct+/cards/a+/cards/b")
    assert spec.base == "smollm2-135m-instruct" and spec.cards == ("/cards/a", "/cards/b")
    assert parse_fusion_model("fusion/base+card").cards == ("card",)
    assert parse_fusion_model("fusion:+card").base is None
    for bad in ("fusion:base", "fusion:base+", "rag:x"):
        with pytest.raises(FusionSpecError):
            parse_fusion_model(bad)
