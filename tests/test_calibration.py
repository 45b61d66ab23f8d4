"""Label-free fusion calibration: a retriever that cannot work gets no weight, and hybrid then
ranks exactly as the one that can; calibration is reproducible for a seed, stored in the
generation and reported by `mighty index stats`."""
from __future__ import annotations

import json

import numpy as np
import pytest

from indexes.calibration import METHOD, FusionCalibration, calibrate
from indexes.collection import Home
from indexes.config import CollectionConfig, FusionConfig
from indexes.documents import SourceDocument
from indexes.fusion import FusionParams, fuse
from rag.metrics import ndcg_at_k
from rag.retriever import Retriever
from rag.schemas import RetrievalRequest
from tests.helpers import run_mighty

_ETHIOPIC = [chr(c) for c in range(0x1200, 0x1358) if chr(c).isalpha()]


def _word(rng: np.random.Generator) -> str:
    return "".join(rng.choice(_ETHIOPIC, size=int(rng.integers(2, 5))))


def _pseudo_language(documents: int = 120, seed: int = 7) -> tuple[list[SourceDocument], dict[str, list[str]]]:
    """Documents in made-up words written in Ethiopic script, which all-MiniLM-L6-v2's vocabulary
    maps to [UNK] (so its vectors carry no meaning here), while BM25 sees ordinary words. Each
    document mixes its own topic words with a shared vocabulary; a query is three topic words."""
    rng = np.random.default_rng(seed)
    common = [_word(rng) for _ in range(300)]
    docs, topics = [], {}
    for number in range(documents):
        own = [_word(rng) for _ in range(8)]
        sentences = []
        for _ in range(4):
            words = list(rng.choice(common, size=6)) + list(rng.choice(own, size=3))
            rng.shuffle(words)
            sentences.append(" ".join(words) + ".")
        doc_id = f"doc{number:03d}"
        docs.append(SourceDocument(doc_id, " ".join(sentences), title=""))
        topics[doc_id] = own
    return docs, topics


@pytest.fixture(scope="module")
def unknown_language(tmp_path_factory):
    home = Home(tmp_path_factory.mktemp("calibration-home"))
    collection = home.create(CollectionConfig(name="pseudo"))
    docs, topics = _pseudo_language()
    with collection.writer() as writer:
        for document in docs:
            writer.upsert(document)
        writer.commit()
    rng = np.random.default_rng(11)
    queries = {doc_id: " ".join(rng.choice(topics[doc_id], size=3, replace=False))
               for doc_id in sorted(topics)[::4]}
    return home, collection, queries


def test_useless_dense_retriever_gets_no_weight_and_hybrid_matches_bm25(unknown_language):
    _, collection, queries = unknown_language
    fusion = collection.stats()["fusion"]
    assert fusion["source"] == "calibrated"
    for style in ("sentence", "keywords"):  # the embedder cannot read this script, however it is asked
        assert fusion["ndcg"][style]["dense"] < 0.5 * fusion["ndcg"][style]["bm25"]
    assert fusion["dense_weight"] == 0.0 and fusion["keyword_weight"] == 0.0
    assert fusion["dense_weight_max"] == 0.0  # dominated on known items: no tie is broken toward dense
    assert fusion["dominated_top"] is not None  # ... and no ramp toward the sentence weight
    retriever = Retriever(collection)
    same_top, scores = 0, {"bm25": [], "hybrid": [], "dense": []}
    for doc_id, query in queries.items():
        ranked = {mode: [h.id for h in retriever.search(RetrievalRequest(query=query, mode=mode, top_k=10)).hits]
                  for mode in scores}
        for mode, ids in ranked.items():
            scores[mode].append(ndcg_at_k(ids, {doc_id: 1}))
        shown = min(5, len(ranked["bm25"]))  # hybrid may add BM25-score-0 rows after BM25's last hit
        same_top += shown > 0 and ranked["hybrid"][:shown] == ranked["bm25"][:shown]
    mean = {mode: float(np.mean(values)) for mode, values in scores.items()}
    assert mean["bm25"] > 0.8 and mean["dense"] < 0.5 * mean["bm25"]
    assert abs(mean["hybrid"] - mean["bm25"]) <= 0.005
    assert same_top == len(queries)


def test_calibration_is_reproducible_for_a_seed_and_stored_in_the_generation(unknown_language):
    _, collection, _ = unknown_language
    snapshot = collection.snapshot()
    first = calibrate(snapshot, collection.config, collection.analyzer, collection.embedder)
    again = calibrate(snapshot, collection.config, collection.analyzer, collection.embedder)
    assert first is not None and first == again
    stored = snapshot.manifest.fusion
    assert first.to_dict() == {k: v for k, v in stored.items() if k in first.to_dict()}
    assert stored["calibrated_generation"] == snapshot.generation and stored["changed_chunks"] == 0
    assert FusionCalibration.from_dict(json.loads(json.dumps(first.to_dict()))) == first
    assert first.probes["sentence"] >= 100 and first.probes["keywords"] >= 100
    assert all(len(curve) == 11 for curve in first.curve.values())
    other = collection.config.model_copy(update={"fusion": FusionConfig(calibration_seed=5)})
    reseeded = calibrate(snapshot, other, collection.analyzer, collection.embedder)
    assert reseeded.seed == 5 and reseeded.dense_weight == 0.0


def test_index_stats_reports_the_calibrated_fusion_and_calibrate_reproduces_it(unknown_language):
    home, collection, _ = unknown_language
    result = run_mighty(home.root, "index", "stats", "pseudo", "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    fusion = stats["fusion"]
    assert fusion["source"] == "calibrated" and fusion["method"] == METHOD
    assert set(fusion["ndcg"]) == {"sentence", "keywords"} == set(fusion["dense_top"]) == set(fusion["dense_top_spread"])
    assert fusion["dense_weight_max"] >= fusion["dense_weight"]
    assert all(set(found) == {"bm25", "dense", "hybrid", "default"} for found in fusion["ndcg"].values())
    again = run_mighty(home.root, "index", "calibrate", "pseudo", "--json")
    assert again.returncode == 0, again.stderr
    remeasured = json.loads(again.stdout)  # same content and seed: the same measurement, on a new generation
    assert remeasured.pop("calibrated_generation") == fusion.pop("calibrated_generation") + 1
    remeasured.pop("calibration"), fusion.pop("calibration")
    assert remeasured == fusion
    assert collection.snapshot().generation == stats["generation"] + 1


def test_small_or_opted_out_collections_keep_the_configured_fusion(tmp_path):
    home = Home(tmp_path)
    docs, _ = _pseudo_language(documents=20)
    for name, fusion in (("small", FusionConfig()), ("fixed", FusionConfig(calibrate=False, dense_weight=0.3))):
        collection = home.create(CollectionConfig(name=name, fusion=fusion))
        with collection.writer() as writer:
            for document in docs:
                writer.upsert(document)
            writer.commit()
        assert collection.snapshot().manifest.fusion is None
        settings = collection.stats()["fusion"]
        assert settings["source"] == "configured" and settings["dense_weight"] == fusion.dense_weight


def test_fusion_at_the_end_weights_ranks_exactly_as_that_retriever():
    rng = np.random.default_rng(3)
    scores = {"bm25": rng.gamma(2.0, 3.0, 50), "dense": rng.uniform(-0.2, 0.9, 50)}
    for normalisation in ("minmax", "zscore"):
        for weight, name in ((0.0, "bm25"), (1.0, "dense")):
            fused, used = fuse(scores, FusionParams(weight, normalisation, adaptive=True))
            assert fused.min() >= 0.0 and fused.max() <= 1.0
            assert used[name] == 1.0
            np.testing.assert_array_equal(np.argsort(-fused, kind="mergesort"),
                                          np.argsort(-scores[name], kind="mergesort"))


def test_a_small_upsert_keeps_the_stored_calibration_and_a_large_change_measures_again(tmp_path, monkeypatch):
    import indexes.writer

    docs, _ = _pseudo_language(documents=140)
    collection = Home(tmp_path).create(CollectionConfig(name="growing"))
    with collection.writer() as writer:
        for document in docs[:120]:
            writer.upsert(document)
        writer.commit()
    first = collection.stats()["fusion"]
    assert first["calibrated_generation"] == 1 and first["calibrated_chunks"] == 120
    assert first["calibration"].startswith("measured on this generation")

    calls = []
    measure = indexes.writer.calibrate
    monkeypatch.setattr(indexes.writer, "calibrate", lambda *a: calls.append(1) or measure(*a))
    with collection.writer() as writer:  # 1 new + 1 replaced chunk: 3 changed of 120, under 10%
        writer.upsert(docs[120])
        writer.upsert(SourceDocument(docs[0].id, docs[0].text + " " + docs[1].text, title=""))
        writer.commit()
    kept = collection.stats()["fusion"]
    assert calls == [] and collection.snapshot().generation == 2
    assert kept["changed_chunks"] == 3 and kept["calibrated_generation"] == 1
    assert {k: kept[k] for k in ("dense_weight", "keyword_weight", "normalisation", "ndcg", "dense_top")} == \
        {k: first[k] for k in ("dense_weight", "keyword_weight", "normalisation", "ndcg", "dense_top")}
    assert kept["calibration"].startswith("kept from generation 1: 3 chunks changed")

    with collection.writer() as writer:  # 3 + 19 = 22 changed of 120: over 10%, measured again
        for document in docs[121:140]:
            writer.upsert(document)
        writer.commit()
    again = collection.stats()["fusion"]
    assert calls == [1]
    assert again["calibrated_generation"] == 3 and again["calibrated_chunks"] == 140 and again["changed_chunks"] == 0
    assert again["dense_weight"] == 0.0  # still a language the embedder cannot read


def test_a_sharded_collection_calibrates_on_the_whole_collection_and_fuses_with_it(unknown_language):
    home, single, queries = unknown_language
    docs, _ = _pseudo_language()
    sharded = home.create(CollectionConfig(name="pseudo-sharded", shards=3))
    with sharded.writer() as writer:
        for document in docs:
            writer.upsert(document)
        writer.commit()
    sharded = Home(home.root).open("pseudo-sharded")  # read back from disk
    fusion = sharded.stats()["fusion"]
    assert fusion["source"] == "calibrated" and fusion["calibrated_generation"] == sharded.snapshot().generation
    assert fusion["calibrated_chunks"] == 120 and fusion["dense_weight"] == 0.0
    assert all(shard.snapshot().manifest.fusion is None for shard in sharded.shards)  # measured once, not per shard

    split, whole = Retriever(sharded), Retriever(single)
    for query in queries.values():
        result = split.search(RetrievalRequest(query=query, mode="hybrid", top_k=10))
        assert result.weights["dense"] == 0.0  # fused with the stored calibration, not the configured 0.6
        # rows fused to 0 (found by dense only, weight 0) tie, and ties are ordered by storage position
        hits = [(h.id, round(h.score, 6)) for h in result.hits if h.score > 0]
        assert hits and hits == [(h.id, round(h.score, 6)) for h in
                                 whole.search(RetrievalRequest(query=query, mode="hybrid", top_k=10)).hits if h.score > 0]
    configured = split.search(RetrievalRequest(query=query, mode="hybrid", top_k=10, dense_weight=0.6, adaptive=False))
    assert configured.weights["dense"] == 0.6  # the control: an explicit weight is honoured
