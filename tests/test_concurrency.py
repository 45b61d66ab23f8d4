"""Readers keep answering from the last committed generation while a writer updates."""
from __future__ import annotations

import threading

from indexes.collection import Home
from indexes.documents import SourceDocument
from indexes.writer import WriterBusy
from rag.retriever import Retriever
from rag.schemas import RetrievalRequest


def test_searches_never_fail_or_see_partial_generations(writable_demo_home):
    collection = Home(writable_demo_home).open("demo")
    retriever = Retriever(collection)
    seen, errors, stop = set(), [], threading.Event()

    def read():
        while not stop.is_set():
            try:
                result = retriever.search(RetrievalRequest(query="penguin colonies", mode="hybrid", top_k=50))
                penguins = {h.id for h in result.hits if h.id.startswith("penguin-")}
                seen.add((result.generation, len(penguins)))
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    for batch in range(3):
        with collection.writer() as writer:
            for i in range(10):
                writer.upsert(SourceDocument(f"penguin-{batch}-{i}", f"Penguin colonies number {batch} {i}."))
            writer.commit()
    stop.set()
    for thread in readers:
        thread.join()
    assert not errors
    by_generation = {}
    for generation, count in seen:
        by_generation.setdefault(generation, set()).add(count)
    assert all(len(counts) == 1 for counts in by_generation.values())  # one generation, one answer
    assert by_generation.get(1) in (None, {0})


def test_second_writer_is_refused_while_first_holds_the_lock(writable_demo_home):
    collection = Home(writable_demo_home).open("demo")
    with collection.writer():
        try:
            collection.writer(wait=False)
        except WriterBusy as exc:
            assert "being written by another process" in str(exc)
        else:
            raise AssertionError("a second writer must not get the lock")
