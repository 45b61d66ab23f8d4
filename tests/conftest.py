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
# Tests never touch the user's ~/.mighty; converted models (ONNX export, SmolLM2 safetensors) are
# shared by every test and every server subprocess of the session, so each conversion runs once.
os.environ["MIGHTY_HOME"] = tempfile.mkdtemp(prefix="mighty-test-home-")
os.environ.setdefault("MIGHTY_MODEL_CACHE", str(Path(tempfile.gettempdir()) / "mighty-test-models"))

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
