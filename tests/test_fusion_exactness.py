"""Exactness of the fused decoder against the plain base model, over several decoding steps."""
from __future__ import annotations

import torch
import pytest

from experts.fusion.cards import resolve_card
from experts.fusion.combine import FusionParams, fuse
from experts.fusion.decoder import FusedDecoder
from experts.fusion.fused import FusedModel
from experts.fusion.sampling import SamplingOptions
from experts.models import load_base
from tests.fusion_helpers import BASE, make_lora_card

torch.set_num_threads(2)
STEPS = 6
PROMPT = [{"role": "user", "content": "Why do startups fail?"}]


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    root = tmp_path_factory.mktemp("cards")
    return {"noisy": resolve_card(str(make_lora_card(root / "noisy", "noisy", scale=0.05))),
            "same": resolve_card(str(make_lora_card(root / "same", "same", scale=0)))}


@pytest.fixture(scope="module")
def fused(cards):
    """Both layouts: LoRA card batched as rows with the base, and card as a separate merged model."""
    return {shared: FusedModel(BASE, [cards["noisy"]], shared=shared) for shared in (True, False)}


def base_reference(prompt: list[int], tokens: list[int]) -> list[torch.Tensor]:
    """The plain base model's next-token log-probs after the prompt and after each given token."""
    model = load_base(BASE).model
    out, steps = None, []
    with torch.inference_mode():
        out = model(torch.tensor([prompt]), use_cache=True)
        steps.append(torch.log_softmax(out.logits[0, -1], -1))
        for token in tokens:
            out = model(torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
            steps.append(torch.log_softmax(out.logits[0, -1], -1))
    return steps


def fused_trace(model: FusedModel, params: FusionParams, prompt: list[int]) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy decoding with the fused rule: chosen tokens and the fused log-probs at each step."""
    ids, mask = torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long)
    anti = params.method == "proxy"
    tokens, dists = [], []
    with torch.inference_mode():
        logprobs, anti_lp, states = model.prefill(ids, mask, anti)
        for _ in range(STEPS):
            fused = fuse(logprobs, params, anti_lp)[0]
            dists.append(fused)
            tokens.append(int(fused.argmax()))
            logprobs, anti_lp = model.step(states, torch.tensor(tokens[-1:]), anti)
    return tokens, dists


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def assert_same_distributions(fused: list[torch.Tensor], reference: list[torch.Tensor], shared: bool) -> None:
    """Separate models: bit for bit. Base rows batched with a LoRA card's rows go through batched matmuls
    that round differently (measured: 3e-5 on log-probs near -30, 2e-6 on probabilities)."""
    assert len(fused) == STEPS
    if not shared:
        assert all(torch.equal(x, y) for x, y in zip(fused, reference))
    else:
        assert max_diff(fused, reference) <= 1e-4
        assert max(float((x.exp() - y.exp()).abs().max()) for x, y in zip(fused, reference)) <= 1e-5


def prompt_ids(model: FusedModel) -> list[int]:
    return FusedDecoder(model, model.params("mixture")).encode_chat(PROMPT)


@pytest.mark.parametrize("shared", [False, True])
def test_mixture_with_weights_one_zero_is_the_base_model(fused, shared):
    model = fused[shared]
    prompt = prompt_ids(model)
    tokens, dists = fused_trace(model, FusionParams("mixture", (1.0, 0.0)), prompt)
    reference = base_reference(prompt, tokens)
    assert_same_distributions(dists, reference, shared)
    # and the expert alone really is different, so the rule did something
    _, expert = fused_trace(model, FusionParams("mixture", (0.0, 1.0)), prompt)
    assert max_diff(expert, reference[:len(expert)]) > 1e-2


@pytest.mark.parametrize("shared", [False, True])
def test_proxy_with_alpha_zero_is_the_base_model(fused, shared):
    model = fused[shared]
    prompt = prompt_ids(model)
    tokens, dists = fused_trace(model, FusionParams("proxy", alpha=0.0), prompt)
    reference = base_reference(prompt, tokens)
    if shared:
        assert_same_distributions(dists, reference, shared)
    else:  # log_softmax of a log-softmax: a renormalisation by ~1e-7
        assert max_diff(dists, reference) <= 1e-6
    _, steered = fused_trace(model, FusionParams("proxy", alpha=1.0), prompt)
    assert max_diff(steered, dists) > 1e-2


def test_product_of_a_model_with_itself_is_the_model(cards):
    model = FusedModel(BASE, [cards["same"]], shared=False)  # the card's LoRA is zero: it is the base
    prompt = prompt_ids(model)
    for weights in ((0.5, 0.5), (0.2, 0.8)):
        tokens, dists = fused_trace(model, FusionParams("product", weights), prompt)
        reference = base_reference(prompt, tokens)
        # 0.2 * x + 0.8 * x is x up to a few float32 ulps (about 4e-6 at log-probs near -30)
        assert all(torch.allclose(x, y, rtol=1e-6, atol=1e-6) for x, y in zip(dists, reference))


def test_streamed_and_whole_outputs_are_identical_under_greedy(fused):
    model = fused[True]
    decoder = FusedDecoder(model, FusionParams("mixture", (0.6, 0.4)))
    prompts = [decoder.encode_chat(PROMPT), decoder.encode_text("The best way to learn programming is")]
    for options in (SamplingOptions(max_tokens=14), SamplingOptions(max_tokens=14, stop=[","])):
        whole = decoder.generate(prompts, options)
        results = []
        pieces = ["", ""]
        for row, delta in decoder.stream(prompts, options, results=results):
            pieces[row] += delta
        assert pieces == [g.text for g in whole]
        assert [r.token_ids for r in results] == [g.token_ids for g in whole]
        assert all(g.completion_tokens > 0 for g in whole)


def test_a_decoder_without_cards_gives_the_plain_models_greedy_tokens():
    model = FusedModel(BASE, [])
    decoder = FusedDecoder(model, model.params())
    prompt = decoder.encode_chat(PROMPT)
    ours = decoder.generate([prompt], SamplingOptions(max_tokens=12))[0].token_ids
    base = load_base(BASE).model
    with torch.inference_mode():
        theirs = base.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                               max_new_tokens=12, do_sample=False, top_k=None, top_p=None, temperature=None)
    assert ours == theirs[0, len(prompt):].tolist()


def test_batched_prompts_decode_as_they_do_alone(fused):
    decoder = FusedDecoder(fused[True], FusionParams("product", (0.7, 0.3)))
    prompts = [decoder.encode_text("Hackers and painters"), decoder.encode_chat(PROMPT)]
    options = SamplingOptions(max_tokens=8)
    together = [g.token_ids for g in decoder.generate(prompts, options)]
    alone = [decoder.generate([p], options)[0].token_ids for p in prompts]
    assert together == alone


def test_sampling_controls_on_the_fused_decoder(fused):
    decoder = FusedDecoder(fused[True], FusionParams("entropy", temperature=1.0))
    prompts = [decoder.encode_chat(PROMPT)]
    sampled = SamplingOptions(max_tokens=8, temperature=0.9, top_p=0.9, top_k=20, repetition_penalty=1.3, seed=3)
    first, second = decoder.generate(prompts, sampled)[0], decoder.generate(prompts, sampled)[0]
    assert first.token_ids == second.token_ids  # a seed makes sampling reproducible
    greedy = decoder.generate(prompts, SamplingOptions(max_tokens=8))[0]
    cut_at = greedy.text.strip().split(" ")[1]  # the second word greedy decoding writes
    stopped = decoder.generate(prompts, SamplingOptions(max_tokens=8, stop=[cut_at]))[0]
    assert stopped.finish_reason == "stop" and cut_at not in stopped.text and greedy.text.startswith(stopped.text)
    assert decoder.last_stats.mean_weights is not None and len(decoder.last_stats.mean_weights) == 2
