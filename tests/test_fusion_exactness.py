"""Exactness of the fused decoder (on the llama.cpp runtime) against the plain base model, over several steps."""
from __future__ import annotations

import torch
import pytest

from experts.fusion.cards import resolve_card
from experts.fusion.combine import FusionParams, fuse
from experts.fusion.decoder import FusedDecoder
from experts.fusion.fused import FusedModel
from rag.runtime import load_model
from rag.runtime.sampling import SamplingOptions
from tests.fusion_helpers import BASE, make_lora_card

STEPS = 6
PROMPT = [{"role": "user", "content": "Why do startups fail?"}]


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    root = tmp_path_factory.mktemp("cards")
    return {"noisy": resolve_card(str(make_lora_card(root / "noisy", "noisy", scale=0.05))),
            "same": resolve_card(str(make_lora_card(root / "same", "same", scale=0)))}


@pytest.fixture(scope="module")
def fused(cards):
    """The base with a LoRA card applied at run time by llama.cpp (its own context on the same GGUF)."""
    return FusedModel(BASE, [cards["noisy"]])


@pytest.fixture(scope="module")
def reference_model():
    """A separate llama.cpp instance of the plain base: nothing shared with the fused model."""
    return load_model(BASE)


def base_reference(model, prompt: list[int], tokens: list[int]) -> list[torch.Tensor]:
    """The plain base model's next-token log-probs after the prompt and after each given token."""
    model.reset()
    steps = [torch.log_softmax(model.prefill(prompt).float(), -1)]
    for token in tokens:
        steps.append(torch.log_softmax(model.step(token).float(), -1))
    return steps


def fused_trace(model: FusedModel, params: FusionParams, prompt: list[int]) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy decoding with the fused rule, from a cold KV cache: chosen tokens and fused log-probs per step."""
    anti = params.method == "proxy"
    tokens, dists = [], []
    with model.session(anti) as session:
        for role_model in session.models:
            role_model.reset()
        logprobs, anti_lp = session.start(prompt)
        for _ in range(STEPS):
            fused = fuse(logprobs.unsqueeze(1), params, anti_lp.unsqueeze(1) if anti_lp is not None else None)[0]
            dists.append(fused)
            tokens.append(int(fused.argmax()))
            logprobs, anti_lp = session.advance(tokens[-1])
    return tokens, dists


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def prompt_ids(model: FusedModel) -> list[int]:
    return FusedDecoder(model, model.params("mixture")).encode_chat(PROMPT)


def test_mixture_with_weights_one_zero_is_the_base_model(fused, reference_model):
    prompt = prompt_ids(fused)
    tokens, dists = fused_trace(fused, FusionParams("mixture", (1.0, 0.0)), prompt)
    reference = base_reference(reference_model, prompt, tokens)
    assert len(dists) == STEPS
    # the same GGUF, the same token batches: llama.cpp gives the same logits bit for bit, whatever the
    # thread count (the fused run splits the cores between its two contexts)
    assert all(torch.equal(x, y) for x, y in zip(dists, reference))
    # and the expert alone really is different, so the rule did something
    _, expert = fused_trace(fused, FusionParams("mixture", (0.0, 1.0)), prompt)
    assert max_diff(expert, reference[:len(expert)]) > 1e-2


def test_proxy_with_alpha_zero_is_the_base_model(fused, reference_model):
    prompt = prompt_ids(fused)
    tokens, dists = fused_trace(fused, FusionParams("proxy", alpha=0.0), prompt)
    reference = base_reference(reference_model, prompt, tokens)
    assert max_diff(dists, reference) <= 1e-6  # log_softmax of a log-softmax: a renormalisation by ~1e-7
    _, steered = fused_trace(fused, FusionParams("proxy", alpha=1.0), prompt)
    assert max_diff(steered, dists) > 1e-2


def test_product_of_a_model_with_itself_is_the_model(cards, reference_model):
    model = FusedModel(BASE, [cards["same"]])  # the card's LoRA is zero: it is the base
    prompt = prompt_ids(model)
    for weights in ((0.5, 0.5), (0.2, 0.8)):
        tokens, dists = fused_trace(model, FusionParams("product", weights), prompt)
        reference = base_reference(reference_model, prompt, tokens)
        # 0.2 * x + 0.8 * x is x up to a few float32 ulps (about 4e-6 at log-probs near -30)
        assert all(torch.allclose(x, y, rtol=1e-6, atol=1e-6) for x, y in zip(dists, reference))


def test_streamed_and_whole_outputs_are_identical_under_greedy(fused):
    model = fused
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
    """Against llama.cpp's own sampler (an independent implementation of greedy decoding)."""
    import llama_cpp

    model = FusedModel(BASE, [])
    decoder = FusedDecoder(model, model.params())
    prompt = decoder.encode_chat(PROMPT)
    ours = decoder.generate([prompt], SamplingOptions(max_tokens=12))[0].token_ids
    plain = llama_cpp.Llama(model_path=str(model.runtime.path), n_ctx=512, verbose=False)
    theirs = []
    for token in plain.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0):
        theirs.append(token)
        if len(theirs) == len(ours):
            break
    assert ours == theirs


def test_batched_prompts_decode_as_they_do_alone(fused):
    decoder = FusedDecoder(fused, FusionParams("product", (0.7, 0.3)))
    prompts = [decoder.encode_text("Hackers and painters"), decoder.encode_chat(PROMPT)]
    options = SamplingOptions(max_tokens=8)
    together = [g.token_ids for g in decoder.generate(prompts, options)]
    alone = [decoder.generate([p], options)[0].token_ids for p in prompts]
    assert together == alone


def test_sampling_controls_on_the_fused_decoder(fused):
    decoder = FusedDecoder(fused, FusionParams("entropy", temperature=1.0))
    prompts = [decoder.encode_chat(PROMPT)]
    sampled = SamplingOptions(max_tokens=8, temperature=0.9, top_p=0.9, top_k=20, repetition_penalty=1.3, seed=3)
    first, second = decoder.generate(prompts, sampled)[0], decoder.generate(prompts, sampled)[0]
    assert first.token_ids == second.token_ids  # a seed makes sampling reproducible
    greedy = decoder.generate(prompts, SamplingOptions(max_tokens=8))[0]
    cut_at = greedy.text.strip().split(" ")[1]  # the second word greedy decoding writes
    stopped = decoder.generate(prompts, SamplingOptions(max_tokens=8, stop=[cut_at]))[0]
    assert stopped.finish_reason == "stop" and cut_at not in stopped.text and greedy.text.startswith(stopped.text)
    assert decoder.last_stats.mean_weights is not None and len(decoder.last_stats.mean_weights) == 2
