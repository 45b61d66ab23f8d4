"""The verify policy's confidence: P("yes") / (P("yes") + P("no")) from a local model's logits (one
forward pass, reusing the answer in the KV cache), sampled verdicts for models without logits.

The model is SmolLM2 through the same `local/` provider the service uses; the expected values are
recomputed independently (teacher-forced logits over the whole prompt, softmax over the vocabulary).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rag import cascade, cascade_verify, llm
from rag.context import Source
from rag.prompts import VERIFY_ORDERINGS, answer_messages, verify_messages, verify_prompt
from tests.cascade_helpers import SMALL
from tests.conftest import DEMO_DOCS

QUESTION = "What is the default chunk size?"


def _sources() -> list[Source]:
    text = (DEMO_DOCS / "concepts-chunking.md").read_text(encoding="utf-8")[:1200]
    return [Source(1, "docs/concepts-chunking.md", "Chunking", text, (0, len(text)), 1.0)]


def _model():
    from rag.litellm_local import local_model

    return local_model(SMALL.removeprefix("local/"))


def _expected(model, messages: list[dict], answer: str, ordering: int) -> float:
    """P(yes)/(P(yes)+P(no)) from teacher-forced logits of the whole verification prompt (cache rebuilt)."""
    tokens = model.tokens(verify_messages(messages, answer, ordering))
    with model.lock:
        probabilities = model.score(tokens)[-1].double().softmax(-1)
    tokenize = lambda text: model.tokenize(text, special=False, add_bos=False)  # noqa: E731
    yes = probabilities[cascade_verify.word_ids(tokenize, cascade_verify.YES_SPELLINGS)].sum()
    no = probabilities[cascade_verify.word_ids(tokenize, cascade_verify.NO_SPELLINGS)].sum()
    return float(yes / (yes + no))


def test_yes_share_is_the_probability_of_yes_against_no():
    logits = np.random.default_rng(0).normal(0, 3, 64)
    yes, no = [3, 7], [11, 20]
    share, mass = cascade_verify.yes_share(logits, yes, no)
    p = torch.tensor(logits).softmax(-1).numpy()
    assert share == pytest.approx((p[3] + p[7]) / (p[3] + p[7] + p[11] + p[20]), rel=1e-9)
    assert mass == pytest.approx(p[3] + p[7] + p[11] + p[20], rel=1e-9)
    assert 0 < share < 1 and 0 < mass < 1
    assert share + cascade_verify.yes_share(logits, no, yes)[0] == pytest.approx(1.0)
    assert cascade_verify.yes_share(logits + 5000.0, yes, no)[0] == pytest.approx(share)  # no overflow
    # both words all but impossible: still a probability (the odds of one against the other), not 0/0
    far = np.zeros(64)
    far[yes], far[no] = -800.0, -801.0
    unlikely, tiny = cascade_verify.yes_share(far, yes, no)
    assert unlikely == pytest.approx(1 / (1 + np.exp(-1))) and tiny < 1e-300


def test_orderings_rotate_the_examples_and_keep_the_first_prompt():
    prompts = [verify_prompt(i) for i in range(len(VERIFY_ORDERINGS))]
    assert len(set(prompts)) == len(VERIFY_ORDERINGS)  # every ordering is a different request
    assert all(p.endswith("Verdict:") for p in prompts)
    last_lines = {p.splitlines()[-2] for p in prompts[:3]}
    assert len(last_lines) == 3  # the three rotations put each example last once


def test_logits_are_used_when_available_and_match_an_independent_computation():
    options = llm.LLMOptions(model=SMALL, max_tokens=48)
    messages = answer_messages(QUESTION, _sources())
    answer = llm.complete(options, messages).text  # leaves the prompt and the answer in the KV cache
    model = _model()
    prompt_tokens = len(model.tokens(messages))
    confidence, stage, found = cascade.verify_detail(options, messages, answer, 1)
    assert stage.method == found.method == "logits" and stage.role == "verify"
    assert stage.completion_tokens == 0  # nothing sampled: one forward pass
    assert stage.cached_tokens >= prompt_tokens  # the answer prompt is not read again
    assert stage.prompt_tokens == len(model.tokens(verify_messages(messages, answer))) > stage.cached_tokens
    assert 0 < confidence < 1 and 0 < found.mass <= 1
    assert confidence == pytest.approx(_expected(model, messages, answer, 0), abs=0.01)

    three, stage3, found3 = cascade.verify_detail(options, messages, answer, 3)
    assert len(found3.per_ordering) == len(found3.ordering_ms) == 3
    assert three == pytest.approx(np.mean(found3.per_ordering))
    assert found3.per_ordering[1] == pytest.approx(_expected(model, messages, answer, 1), abs=0.01)


def test_an_abstention_scores_zero_without_asking_the_model():
    options = llm.LLMOptions(model=SMALL)
    confidence, stage, found = cascade.verify_detail(options, answer_messages(QUESTION, _sources()),
                                                     "I do not know; the sources do not say.", 3)
    assert confidence == 0.0 and stage.method == "abstained" and stage.prompt_tokens == 0


def test_models_without_logits_fall_back_to_sampled_verdicts():
    assert cascade_verify.has_logits(llm.LLMOptions(model=SMALL))
    assert not cascade_verify.has_logits(llm.LLMOptions(model="openai/gpt-4o-mini"))
    assert not cascade_verify.has_logits(llm.LLMOptions(model=SMALL, api_base="http://127.0.0.1:1"))
    # the fallback itself, through LiteLLM (SmolLM2 standing in for a model that returns no logprobs)
    options = llm.LLMOptions(model=SMALL, max_tokens=48)
    messages = answer_messages(QUESTION, _sources())
    found = cascade_verify.by_samples(options, messages, "The default chunk size is 200 tokens [1].", 2)
    assert found.method == "samples" and found.confidence in (0.0, 0.5, 1.0)
    assert found.completion_tokens >= 2 and found.per_ordering == []
