"""`language: auto`: each document's language is detected at ingest and picks its BM25 stopwords and
Snowball stemmer; collections without the setting keep the English analyzer they were built with."""
from __future__ import annotations

import json

import pytest

from indexes.analyzer import Analyzer
from indexes.collection import Home
from indexes.config import BM25Config, CollectionConfig
from indexes.documents import SourceDocument
from indexes.languages import detect
from rag.retriever import Retriever
from rag.schemas import RetrievalRequest
from tests.helpers import run_mighty

DOCS = [
    SourceDocument("fr", "Les chevaux mangent de l'herbe dans le pré, et ils sont heureux quand il fait beau.", title=""),
    SourceDocument("de", "Die Katzen schlafen im Garten, und der Hund wartet vor dem Haus auf die Kinder.", title=""),
    SourceDocument("ru", "Кошки спят в саду, а собака ждёт детей у дома.", title=""),
    SourceDocument("en", "The horses were running across the fields while the farmers were watching them.", title=""),
    SourceDocument("es", "Los perros comen la comida de los gatos y luego duermen en la casa.", title=""),
]


def test_detection_by_script_and_stopwords():
    assert [detect(d.text) for d in DOCS] == ["french", "german", "russian", "english", "spanish"]
    assert detect("القطط تنام في الحديقة") == "arabic"
    assert detect("熊猫喜欢吃竹子") == "cjk"
    assert detect("cheval") is None and detect("12 34") is None  # too little evidence: undecided


@pytest.fixture(scope="module")
def homes(tmp_path_factory):
    home = Home(tmp_path_factory.mktemp("languages"))
    built = {}
    for name, bm25 in (("auto", BM25Config(language="auto")), ("english", BM25Config())):
        collection = home.create(CollectionConfig(name=name, bm25=bm25))
        with collection.writer() as writer:
            for document in DOCS:
                writer.upsert(document)
            writer.commit()
        built[name] = Retriever(Home(home.root).open(name))
    return built


def _bm25(retriever: Retriever, query: str) -> list[str]:
    return [h.id for h in retriever.search(RetrievalRequest(query=query, mode="bm25", top_k=3)).hits]


@pytest.mark.parametrize("query, doc_id", [("cheval", "fr"), ("кошка", "ru"), ("Katze", "de"), ("duerme", "es")])
def test_a_detected_language_stems_its_documents_and_queries_find_them(homes, query, doc_id):
    assert _bm25(homes["auto"], query) == [doc_id]  # chevaux/cheval, кошки/кошка, Katzen/Katze, duermen/duerme
    assert doc_id not in _bm25(homes["english"], query)  # the English analyzer does not relate these forms


def test_english_still_stems_and_stopwords_still_apply(homes):
    assert _bm25(homes["auto"], "horse run") == ["en"]
    german = homes["auto"].collection.analyzer.for_document(DOCS[1].text)
    assert german.language == "german" and "und" not in german.terms(DOCS[1].text)


def test_collections_without_the_setting_keep_the_analyzer_they_were_built_with(homes):
    raw = homes["english"].collection.config.model_dump()
    del raw["bm25"]["language"]  # a collection.json written before the setting existed
    old = CollectionConfig.model_validate(raw)
    assert old.bm25.language == "configured"
    text = DOCS[0].text + " " + DOCS[3].text
    assert Analyzer(old.bm25).terms(text) == Analyzer(BM25Config()).terms(text)
    assert Analyzer(old.bm25).for_document(text).terms(text) == Analyzer(BM25Config()).terms(text)


def test_cli_creates_an_auto_language_collection_and_stats_report_it(tmp_path):
    lines = "\n".join(json.dumps({"_id": d.id, "text": d.text}) for d in DOCS)
    added = run_mighty(tmp_path, "index", "add", "-", "--collection", "multi", "--language", "auto", stdin=lines)
    assert added.returncode == 0, added.stderr
    stats = run_mighty(tmp_path, "index", "stats", "multi", "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["language"] == "auto"
    found = run_mighty(tmp_path, "search", "cheval", "--collection", "multi", "--mode", "bm25", "--json")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["hits"][0]["id"] == "fr"


def test_rest_creates_an_auto_language_collection_and_refuses_an_unknown_setting(tmp_path):
    import httpx

    from tests.helpers import serving

    home = tmp_path / "home"
    home.mkdir()
    with serving(home, "--no-auth") as (base, _, _):
        created = httpx.post(f"{base}/v1/collections", json={"name": "multi", "language": "auto"}, timeout=120)
        assert created.status_code == 201, created.text
        assert created.json()["language"] == "auto"
        refused = httpx.post(f"{base}/v1/collections", json={"name": "other", "language": "klingon"}, timeout=120)
        assert refused.status_code == 422 and "language" in refused.text
    assert Home(home).open("multi").config.bm25.language == "auto"
