"""A writer killed with SIGKILL at any step leaves the previous generation answering identically."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from indexes.collection import Home
from rag.retriever import Retriever
from rag.schemas import RetrievalRequest
from tests.helpers import REPO, run_mighty

QUERIES = ["How are generations committed?", "What does the BM25 k1 parameter do?", "HNSW efSearch recall"]
NEW_DOCS = "\n".join(json.dumps({"_id": f"new-{i}", "title": f"Crash note {i}",
                                 "text": f"Crash test document {i} about zebra migrations and generations."})
                     for i in range(40)) + "\n"


def _answers(home):
    collection = Home(home).open("demo")
    retriever = Retriever(collection)
    results = [retriever.search(RetrievalRequest(query=q, mode=mode, top_k=5))
               for q in QUERIES for mode in ("bm25", "dense", "hybrid")]
    return collection.snapshot().generation, [[(h.id, h.chunk, round(h.score, 6)) for h in r.hits] for r in results]


@pytest.mark.parametrize("failpoint", ["before-segment", "before-publish:segments", "before-publish:generations",
                                       "before-replace:CURRENT"])
def test_killed_writer_leaves_previous_generation_intact(writable_demo_home, failpoint):
    before = _answers(writable_demo_home)
    killed = run_mighty(writable_demo_home, "index", "add", "-", "--collection", "demo", stdin=NEW_DOCS,
                        env={"MIGHTY_FAILPOINT": failpoint})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _answers(writable_demo_home) == before
    # The next writer cleans up what the dead one left and commits normally.
    again = run_mighty(writable_demo_home, "index", "add", "-", "--collection", "demo", stdin=NEW_DOCS)
    assert again.returncode == 0, again.stderr
    generation, _ = _answers(writable_demo_home)
    assert generation > before[0]
    collection = Home(writable_demo_home).open("demo")
    assert collection.snapshot().manifest.documents == 31 + 40
    leftovers = [p.name for p in (writable_demo_home / "collections" / "demo").rglob(".tmp-*")]
    assert leftovers == []


def test_kill_after_commit_exposes_the_complete_new_generation(writable_demo_home):
    killed = run_mighty(writable_demo_home, "index", "add", "-", "--collection", "demo", stdin=NEW_DOCS,
                        env={"MIGHTY_FAILPOINT": "after-commit"})
    assert killed.returncode == -signal.SIGKILL
    collection = Home(writable_demo_home).open("demo")
    assert collection.snapshot().manifest.documents == 71
    hits = Retriever(collection).search(RetrievalRequest(query="zebra migrations", mode="bm25")).hits
    assert hits[0].id.startswith("new-")


def test_sigkill_from_outside_mid_embedding(writable_demo_home):
    before = _answers(writable_demo_home)
    big = "\n".join(json.dumps({"_id": f"bulk-{i}", "text": f"bulk passage {i} " + "lorem ipsum " * 60})
                    for i in range(3000)) + "\n"
    env = {**__import__("os").environ, "MIGHTY_HOME": str(writable_demo_home), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "api.cli.main", "index", "add", "-", "--collection", "demo"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=REPO, env=env, text=True)
    process.stdin.write(big)
    process.stdin.close()
    time.sleep(12)  # model loaded, chunking done, embedding under way
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert _answers(writable_demo_home) == before
