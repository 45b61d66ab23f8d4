"""A card steers a larger base of its family only when it declares it (model.steers) and the vocabularies
match; proxy-tuning and contrastive decoding then use the card's untuned base as anti-expert / amateur.

SmolLM2 stand-ins keep this fast: a tiny random Llama with SmolLM2's tokenizer plays the larger base
(as Qwen2.5-Coder-1.5B does for a 0.5B card), a random LoRA on SmolLM2 plays the card.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from experts.fusion.cards import resolve_card
from experts.fusion.combine import FusionParams, contrastive, fuse
from experts.fusion.decoder import FusedDecoder
from experts.fusion.fused import FusedModel, UndeclaredBase
from experts.fusion.vocab import VocabularyMismatch
from experts.models import runtime_model
from rag.runtime.sampling import SamplingOptions
from tests.fusion_helpers import BASE, larger_base, make_lora_card, tiny_corpus, write_manifest

GEMMA = "gemma3-270m"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("steering")
    large = str(larger_base(root / "large"))
    free = make_lora_card(root / "free", "free", scale=0.03)  # declares nothing: steers only SmolLM2
    steerer = make_lora_card(root / "steerer", "steerer", scale=0.03, steers=[large])
    return {"root": root, "large": large, "free": resolve_card(str(free)), "steerer": resolve_card(str(steerer))}


def test_a_card_steers_only_the_bases_it_declares(pair):
    with pytest.raises(UndeclaredBase) as refused:
        FusedModel(pair["large"], [pair["free"]])
    message = str(refused.value)
    assert pair["large"] in message and BASE in message and "free@1.0.0" in message and "model.steers" in message
    fused = FusedModel(pair["large"], [pair["steerer"]])
    (anti,) = fused.anti_roles()
    assert anti.label == BASE and anti.model is not fused.runtime  # the untuned SmolLM2, not the large base
    own = FusedModel(BASE, [pair["free"]])
    assert own.anti_roles()[0].model is own.runtime  # on its own base the anti-expert is the base, at no cost


def test_a_declared_base_of_another_family_is_still_refused(tmp_path):
    (tmp_path / "gemma").mkdir()  # manifest only: the refusal comes before any weights are read
    write_manifest(tmp_path / "gemma", "gemma-steerer", steers=[GEMMA])
    card = resolve_card(str(tmp_path / "gemma"))
    with pytest.raises(VocabularyMismatch) as refused:
        FusedModel(GEMMA, [card])
    assert GEMMA in str(refused.value) and BASE in str(refused.value) and "vocabularies differ" in str(refused.value)


def test_contrastive_rule_keeps_the_plausible_tokens_and_penalises_the_amateur():
    expert = torch.log(torch.tensor([[0.5, 0.3, 0.16, 0.04]]))
    amateur = torch.log(torch.tensor([[0.7, 0.1, 0.1, 0.1]]))
    scores = contrastive(expert, amateur, beta=0.5, plausibility=0.1)
    assert torch.isinf(scores[0, 3]) and torch.isfinite(scores[0, :3]).all()  # 0.04 < 0.1 x 0.5
    raw = expert[0, :3] - 0.5 * amateur[0, :3]
    assert torch.allclose(scores[0, :3], torch.log_softmax(raw, -1))
    assert int(scores.argmax()) == 1  # the amateur's favourite loses its lead
    assert torch.allclose(contrastive(expert, amateur, beta=0.0, plausibility=1.0).exp(),
                          torch.tensor([[1.0, 0, 0, 0]]))  # alpha 1 keeps only the expert's top token
    fused = fuse(torch.stack([expert, expert]), FusionParams("contrastive"), amateur.unsqueeze(0))
    assert torch.allclose(fused, scores)
    with pytest.raises(ValueError, match="amateur"):
        fuse(torch.stack([expert, expert]), FusionParams("contrastive"))
    with pytest.raises(ValueError, match="plausibility"):
        FusionParams("contrastive", plausibility=0.0)


def test_proxy_and_contrastive_use_the_untuned_card_base(pair):
    fused = FusedModel(pair["large"], [pair["steerer"]])
    prompt = fused.runtime.encode("Startups should")

    def own(model) -> torch.Tensor:
        with model.lock:
            return torch.log_softmax(model.prefill(prompt)[: fused.vocab.size].float(), -1)

    large, card = own(fused.runtime), own(runtime_model(BASE, pair["steerer"].adapter))
    untuned = own(runtime_model(BASE))
    with fused.session(anti=True) as session:
        logprobs, anti = session.start(prompt)
    assert torch.allclose(anti[0], untuned, atol=1e-4) and torch.allclose(logprobs[1], card, atol=1e-4)
    proxied = fuse(logprobs.unsqueeze(1), FusionParams("proxy", alpha=1.0), anti.unsqueeze(1))[0]
    assert torch.allclose(proxied, torch.log_softmax(large + card - untuned, -1), atol=1e-4)
    decoder = FusedDecoder(fused, fused.params("contrastive"))
    first = decoder.generate([prompt], SamplingOptions(max_tokens=1))[0].token_ids[0]
    assert first == int(contrastive(large, untuned, 0.5, 0.1).argmax())


def test_contrastive_with_its_own_base_as_amateur_is_greedy_decoding(pair):
    """Amateur = expert: log p - 0.5 log p = 0.5 log p, so contrastive decoding picks greedy's tokens."""
    fused = FusedModel(BASE, [pair["free"]])
    prompt = fused.runtime.encode("The best way to learn programming is")
    contrastive_ids = FusedDecoder(fused, fused.params("contrastive")).generate(
        [prompt], SamplingOptions(max_tokens=8))[0].token_ids
    greedy_ids = fused.runtime.generate(prompt, SamplingOptions(max_tokens=8)).token_ids
    assert contrastive_ids == greedy_ids and len(greedy_ids) == 8


def test_fusion_cli_evaluates_every_rule_on_a_larger_base_and_stores_contrastive(pair, tmp_path):
    from typer.testing import CliRunner

    from api.cli.main import app

    corpus = tiny_corpus(tmp_path / "corpus.jsonl", documents=6)
    folder = str(pair["steerer"].folder)
    runner = CliRunner()
    result = runner.invoke(app, ["--home", str(tmp_path / "home"), "fusion", "eval", "--base", pair["large"],
                                 "--card", folder, "--corpus", str(corpus), "--speed-tokens", "0",
                                 "--max-tokens", "120", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["base"] == pair["large"] and set(report["ppl_anti"]) == {BASE}
    assert set(report["ppl_fused"]) == {"mixture", "product", "proxy", "entropy", "learned"}
    assert all(math.isfinite(ppl) and ppl > 1 for ppl in report["ppl_fused"].values())
    refused = runner.invoke(app, ["--home", str(tmp_path / "home"), "fusion", "eval", "--base", pair["large"],
                                  "--card", str(pair["free"].folder), "--corpus", str(corpus)])
    assert refused.exit_code != 0 and "does not declare that it steers" in " ".join(refused.output.split())
    stored = runner.invoke(app, ["--home", str(tmp_path / "home"), "fusion", "fit", "--method", "contrastive",
                                 "--base", pair["large"], "--card", folder, "--corpus", str(corpus),
                                 "--out", str(tmp_path / "cd"), "--json"])
    assert stored.exit_code == 0, stored.output
    assert json.loads(stored.stdout.strip().splitlines()[-1])["weights"] == {"beta": 0.5, "plausibility": 0.1}
    params = FusedModel(pair["large"], [resolve_card(str(tmp_path / "cd"))]).params()
    assert params.method == "contrastive" and (params.beta, params.plausibility) == (0.5, 0.1)
