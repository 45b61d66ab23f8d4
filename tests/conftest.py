"""Shared fixtures. Models load from installed packages only: nothing may reach a model hub."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch/llama.cpp start OpenMP: see rag/runtime
# Tests never touch the user's ~/.mighty; converted models (ONNX export, SmolLM2 safetensors) are
# shared by every test and every server subprocess of the session, so each conversion runs once.
os.environ["MIGHTY_HOME"] = tempfile.mkdtemp(prefix="mighty-test-home-")
os.environ.setdefault("MIGHTY_MODEL_CACHE", str(Path(tempfile.gettempdir()) / "mighty-test-models"))
# answers in tests come from the fastest local model; the default (Qwen 0.5B) is measured in benchmarks
os.environ.setdefault("MIGHTY_DEFAULT_LLM", "local/smollm2-135m-instruct")
os.environ.setdefault("MIGHTY_CARD_BASE", "smollm2-135m-instruct")  # cards train on the fast base in tests

REPO = Path(__file__).resolve().parents[1]
DEMO_DOCS = REPO / "data" / "docs"
SHARED = REPO.parent / "shared"
MSMARCO = SHARED / "benchmarks" / "msmarco"


@pytest.fixture(scope="session")
def msmarco_records() -> list[dict]:
    if not MSMARCO.exists():
        pytest.fail(f"{MSMARCO} is missing: the shared benchmark data must sit beside the checkout")
    with open(MSMARCO / "corpus.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory) -> Path:
    """A home with the demo corpus indexed once per test session (read-only for tests)."""
    from indexes.collection import Home
    from indexes.config import CollectionConfig
    from indexes.readers import read_paths

    root = tmp_path_factory.mktemp("demo-home")
    collection = Home(root).create(CollectionConfig(name="demo"))
    with collection.writer() as writer:
        for document in read_paths([str(DEMO_DOCS)], collection.config.max_document_bytes):
            writer.upsert(document)
        writer.commit()
    return root


@pytest.fixture
def writable_demo_home(demo_home, tmp_path) -> Path:
    """A private copy of the indexed demo home that a test may change."""
    target = tmp_path / "home"
    shutil.copytree(demo_home, target)
    return target


@pytest.fixture(scope="session")
def postgres_server():
    """PostgreSQL for the registry tests: MIGHTY_TEST_POSTGRES_URL, else a throwaway local server.

    Never skipped: without PostgreSQL the tests that need it fail and say what to install."""
    from tests.postgres import PostgresServer, PostgresUnavailable

    try:
        server = PostgresServer(os.environ.get("MIGHTY_TEST_POSTGRES_URL"))
    except PostgresUnavailable as error:
        pytest.fail(str(error), pytrace=False)
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A fresh, empty database on each backend the registry supports (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mighty.db'}"
        return
    server = request.getfixturevalue("postgres_server")
    url = server.new_database()
    yield url
    server.drop_database(url)


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory) -> Path:
    """A real LoRA adapter (r=4, q_proj/v_proj) on the default local base, made once per session."""
    from tests.cards_helpers import make_tiny_adapter

    return make_tiny_adapter(tmp_path_factory.mktemp("tiny-adapter") / "adapter")
