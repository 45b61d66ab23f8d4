"""Speculative decoding: a draft model's guesses, checked k at a time by the target, never change the target's
output (greedy or seeded sampling, whole or streamed); rejected guesses are rolled back; a draft with another
vocabulary, or a malformed pairing, is refused naming both models."""
from __future__ import annotations

import pytest
import torch

from rag.runtime import LOOP_NGRAM, LocalModelError, SamplingOptions, load_model
from rag.runtime.llama import LlamaModel
from rag.runtime.registry import LOCAL_MODELS
from rag.runtime.speculative import MAX_DRAFT, SpeculativeModel, check_draft_models, draft_pairs

BASE = "smollm2-135m-instruct"
PROMPTS = [
    [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
    [{"role": "user", "content": "List three uses of a vector database."}],
    [{"role": "system", "content": "Answer from the context.\nContext: Mighty chunks documents into 512 "
                                   "tokens with an overlap of 64."},
     {"role": "user", "content": "How large are Mighty's chunks?"}],
]


class NoisyDraft(LlamaModel):
    """SmolLM2 with seeded noise on its logits: a same-vocabulary draft that is right often, not always."""

    def _noisy(self, logits: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(logits.shape, generator=self.noise)
        return logits + 1.5 * noise

    def prefill(self, tokens: list[int]) -> torch.Tensor:
        return self._noisy(super().prefill(tokens))

    def step(self, token: int) -> torch.Tensor:
        return self._noisy(super().step(token))


@pytest.fixture(scope="module")
def target() -> LlamaModel:
    model = load_model(BASE, batch_invariant=True)
    assert isinstance(model, LlamaModel)
    return model


@pytest.fixture(scope="module")
def noisy(target) -> SpeculativeModel:
    draft = NoisyDraft(BASE, LOCAL_MODELS[BASE].gguf(), batch_invariant=True)
    draft.noise = torch.Generator().manual_seed(0)
    return SpeculativeModel(target, draft)


def test_greedy_speculation_is_the_target_token_for_token_and_rejections_are_rolled_back(target, noisy):
    drafted = accepted = 0
    for prompt, ngram in zip(PROMPTS, (0, LOOP_NGRAM, LOOP_NGRAM)):
        options = SamplingOptions(max_tokens=40, no_repeat_ngram=ngram)
        alone = target.generate(prompt, options)
        drafting = noisy.generate(prompt, options)
        assert drafting.token_ids == alone.token_ids and drafting.text == alone.text
        assert drafting.finish_reason == alone.finish_reason and drafting.prompt_tokens == alone.prompt_tokens
        assert alone.drafted == 0 and drafting.drafted >= drafting.accepted
        drafted, accepted = drafted + drafting.drafted, accepted + drafting.accepted
    assert 0 < accepted < drafted  # guesses were accepted, and rejected ones were rolled back


def test_streamed_speculation_concatenates_to_the_whole_answer(target, noisy):
    options = SamplingOptions(max_tokens=40, stop=["3."], no_repeat_ngram=LOOP_NGRAM)
    whole = target.generate(PROMPTS[1], options)
    results = []
    pieces = list(noisy.stream(PROMPTS[1], options, results=results))
    assert "".join(pieces) == whole.text and len(pieces) > 1
    assert results[0].token_ids == whole.token_ids and results[0].drafted > 0


def test_seeded_sampling_with_a_draft_samples_the_targets_own_tokens(target, noisy):
    """Sampling from the target and accepting a guess when the sample equals it is Leviathan et al.'s rule
    for a greedy draft, and it draws the same random numbers as sampling alone."""
    options = SamplingOptions(max_tokens=40, temperature=0.9, top_p=0.95, seed=3)
    alone = target.generate(PROMPTS[0], options)
    drafting = noisy.generate(PROMPTS[0], options)
    assert drafting.token_ids == alone.token_ids and drafting.drafted > 0


def test_a_perfect_draft_is_always_accepted_and_guesses_grow(target):
    twin = SpeculativeModel(target, load_model(BASE, batch_invariant=True), guesses=2)
    options = SamplingOptions(max_tokens=32, no_repeat_ngram=LOOP_NGRAM)
    result = twin.generate(PROMPTS[2], options)
    assert result.token_ids == target.generate(PROMPTS[2], options).token_ids
    assert result.drafted > 0 and result.accepted == result.drafted
    assert twin.guesses == MAX_DRAFT


def test_a_draft_with_another_vocabulary_is_refused_naming_both(target):
    with pytest.raises(LocalModelError, match=r"'gemma3-270m' cannot speculate for 'smollm2-135m-instruct'.*"
                                              r"vocabularies differ"):
        SpeculativeModel(target, load_model("gemma3-270m", batch_invariant=True))


def test_pairings_are_checked_at_start_up(monkeypatch):
    monkeypatch.setenv("MIGHTY_DRAFT_MODELS", f"{BASE}:gemma3-270m")
    with pytest.raises(LocalModelError, match="'gemma3-270m' cannot speculate for 'smollm2-135m-instruct'"):
        check_draft_models()
    for bad in (f"{BASE}", f"{BASE}:{BASE}", f"{BASE}:a,{BASE}:b", f"a:{BASE},{BASE}:b"):
        monkeypatch.setenv("MIGHTY_DRAFT_MODELS", bad)
        with pytest.raises(LocalModelError, match="MIGHTY_DRAFT_MODELS"):
            draft_pairs()
    monkeypatch.setenv("MIGHTY_DRAFT_MODELS", f"{BASE}:nosuchmodel")
    with pytest.raises(LocalModelError, match="unknown local model 'nosuchmodel'"):
        check_draft_models()


def test_a_paired_local_model_drafts_through_litellm_and_reports_acceptance(monkeypatch, target):
    """An operator pairs the model with a draft (here another name for the same file); `local/<model>`
    then drafts, transparently, and its usage says how many guesses were accepted."""
    import litellm

    from rag.litellm_local import register_local_provider

    monkeypatch.setenv("MIGHTY_LOCAL_MODELS", f"smol-draft={LOCAL_MODELS[BASE].gguf()}")
    monkeypatch.setenv("MIGHTY_DRAFT_MODELS", f"{BASE}:smol-draft")
    assert check_draft_models() == [f"{BASE} drafted by smol-draft"]
    register_local_provider()
    response = litellm.completion(model=f"local/{BASE}", messages=PROMPTS[0], max_tokens=24)
    alone = target.generate(PROMPTS[0], SamplingOptions(max_tokens=24, no_repeat_ngram=LOOP_NGRAM))
    assert response.choices[0].message.content == alone.text
    assert response.usage.completion_tokens == alone.completion_tokens
    assert 0 < response.usage.accepted_draft_tokens <= response.usage.draft_tokens
    chunks = litellm.completion(model=f"local/{BASE}", messages=PROMPTS[0], max_tokens=24, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == alone.text


# --- the cost-aware switch-off (rag.runtime.draft_cost) ----------------------------------------------

def test_expected_tokens_and_predicted_speedup_worked_by_hand():
    from rag.runtime.draft_cost import expected_tokens, predicted_speedup

    assert expected_tokens(0.0, 4) == 1.0 and expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    # RESULTS "Speculative decoding", 2 shared cores: acceptance 0.57, 4 guesses, a 0.5B guess 0.4 of a
    # 1.5B step, verifying 5 positions 3.3 steps -> about 2.19 tokens for 4.9 steps: a slowdown
    two_cores = predicted_speedup(0.57, 4, 0.4, 3.3)
    assert two_cores == pytest.approx((1 - 0.57 ** 5) / 0.43 / 4.9) and two_cores < 0.5
    # memory-bound steps (a GPU): verifying 5 positions costs about one step, a guess a tenth: it pays
    assert predicted_speedup(0.57, 4, 0.1, 1.1) > 1.4


def _feed(cost, rounds: int, step_ms: float, draft_ms: float, verify_ms: float, accepted: int, guesses: int = 4):
    """Drive a DraftCost as a Speculator would: a plain step whenever it asks for one, else a round."""
    plain = 0
    for _ in range(rounds):
        if cost.drafting():
            cost.round(guesses, draft_ms * guesses, verify_ms)
            cost.verdict(accepted, rejected=accepted < guesses)
        else:
            cost.plain_step(step_ms)
            plain += 1
    return plain


def test_drafting_stops_when_a_slowdown_is_predicted_and_is_measured_again_later():
    from rag.runtime.draft_cost import DraftCost

    slow = DraftCost(min_speedup=1.0, warmup_rounds=4, retry_after=10)
    _feed(slow, 1, 100, 40, 330, accepted=2)  # the first call measures a plain step
    assert slow.step_ms.value == 100 and slow.on
    _feed(slow, 3, 100, 40, 330, accepted=2)
    assert slow.on and slow.rounds == 3  # never judged before the warm-up rounds
    _feed(slow, 1, 100, 40, 330, accepted=2)
    assert not slow.on and slow.switched_off == 1 and slow.speedup() < 1
    assert slow.acceptance() == pytest.approx(2 / 3)  # 2 accepted of 3 judged (the 4th never was)
    assert _feed(slow, 10, 100, 40, 330, accepted=2) == 10  # plain steps only, until retry_after
    assert slow.drafting() and slow.on and slow.rounds == 0  # measured again

    fast = DraftCost(min_speedup=1.0, warmup_rounds=4, probe_every=16)
    plain = _feed(fast, 200, 100, 10, 110, accepted=3)
    assert fast.on and fast.switched_off == 0 and fast.speedup() > 1
    assert 1 < plain < 200 / 16 + 2  # the first plain step and one probe per 16 rounds

    never = DraftCost(min_speedup=0.0, warmup_rounds=1)
    assert _feed(never, 20, 100, 400, 3300, accepted=0) == 0 and never.on  # 0 turns the switch off


def test_a_switched_off_pair_steps_the_target_alone_with_identical_output(target):
    from rag.runtime.draft_cost import DraftCost

    draft = NoisyDraft(BASE, LOCAL_MODELS[BASE].gguf(), batch_invariant=True)
    draft.noise = torch.Generator().manual_seed(0)
    cost = DraftCost(min_speedup=1e9, warmup_rounds=3, retry_after=1000)  # any measurement predicts "too slow"
    pair = SpeculativeModel(target, draft, cost=cost)
    options = SamplingOptions(max_tokens=40, no_repeat_ngram=LOOP_NGRAM)
    result = pair.generate(PROMPTS[1], options)
    assert result.token_ids == target.generate(PROMPTS[1], options).token_ids
    assert cost.switched_off == 1 and not cost.on and cost.rounds == 3  # no round after the switch-off
    assert 0 < result.drafted <= 3 * MAX_DRAFT and cost.step_ms.value > 0
