"""Issue 9 item 11: BM25 over CJK (bigrams), emoji and Arabic, with old collections kept on their analyzer."""
from __future__ import annotations

import json
import re
import unicodedata

import pytest

from indexes.analyzer import Analyzer
from indexes.collection import Home
from indexes.config import ANALYZER_VERSION, BM25Config, CollectionConfig
from indexes.documents import SourceDocument
from indexes.scripts import HANDLERS
from rag.retriever import Retriever
from rag.schemas import RetrievalRequest

CURRENT, LEGACY = Analyzer(BM25Config()), Analyzer(BM25Config(analyzer=1))
DOCUMENTS = [
    SourceDocument("zh", "大熊猫是中国的国宝，野生的熊猫主要生活在四川的山区，每天要吃很多竹子。", "动物"),
    SourceDocument("zh-other", "中国的长城很长，游客每年都去北京参观。", "旅游"),
    SourceDocument("ja", "東京の上野動物園では、パンダが竹を食べる様子を見ることができます。", "動物園"),
    SourceDocument("ko", "판다는 하루 종일 대나무를 먹는다.", "동물"),
    SourceDocument("ar", "يعيش البَانْدا في جبال الصين ويأكل الخيزران. إِنَّ الباندا حيوان لطيف.", "حيوانات"),
    SourceDocument("emoji", "Weekend trip 🐼🎋 with the kids 👍🏽 and a flag 🇨🇳", "Trip"),
    SourceDocument("en", "The runner was running quickly through bamboo forests.", "Running"),
]


def test_cjk_runs_become_overlapping_bigrams():
    assert CURRENT.terms("大熊猫吃竹子") == ["大熊", "熊猫", "猫吃", "吃竹", "竹子"]
    assert CURRENT.terms("猫") == ["猫"]  # a lone character is a unigram
    assert CURRENT.terms("東京タワー") == ["東京", "京タ", "タワ", "ワー"]
    assert CURRENT.terms("판다는") == ["판다", "다는"]
    assert CURRENT.terms("ｶﾀｶﾅ") == ["カタ", "タカ", "カナ"]  # half-width folded by NFKC
    assert CURRENT.terms("iPhone熊猫 rocks") == ["iphon", "熊猫", "rock"]


def test_emoji_are_terms():
    assert CURRENT.terms("love 🐼!") == ["love", "🐼"]
    assert CURRENT.terms("👍🏽👍 ❤️❤") == ["👍", "👍", "❤", "❤"]  # skin tone and presentation folded
    assert CURRENT.terms("👨\u200d👩\u200d👧 🇯🇵🇫🇷") == ["👨\u200d👩\u200d👧", "🇯🇵", "🇫🇷"]


def test_arabic_is_normalised():
    plain = CURRENT.terms("احمد اسلام مدرسه")
    assert CURRENT.terms("أَحْمَد إسلام مدرسة") == plain
    assert CURRENT.terms("احـــمد آسلام مدرسة") == plain
    assert LEGACY.terms("أَحْمَد") != plain[:1]  # the old analyzer split at the diacritics


def test_english_terms_are_unchanged(msmarco_records):
    owned = "".join(h.chars for h in HANDLERS.values())
    special = re.compile(f"[{owned}]")
    compared = 0
    for record in msmarco_records[:3000]:
        text = record["text"]
        if special.search(text) or not unicodedata.is_normalized("NFKC", text):
            continue
        assert CURRENT.terms(text) == LEGACY.terms(text), record["_id"]
        compared += 1
    assert compared > 2900


@pytest.fixture(scope="module")
def collections(tmp_path_factory):
    """`now` built with the current analyzer; `old` as a collection created before versions existed."""
    home = Home(tmp_path_factory.mktemp("scripts-home"))
    current = home.create(CollectionConfig(name="now"))
    legacy = home.create(CollectionConfig(name="old"))
    config_file = legacy.folder / "collection.json"
    stored = json.loads(config_file.read_text())
    del stored["bm25"]["analyzer"]
    config_file.write_text(json.dumps(stored))
    reopened = Home(home.root)
    for name in ("now", "old"):
        with reopened.open(name).writer() as writer:
            for document in DOCUMENTS:
                writer.upsert(document)
            writer.commit()
    return Home(home.root)


def _bm25(collection, query: str) -> list[str]:
    hits = Retriever(collection).search(RetrievalRequest(query=query, mode="bm25", top_k=3)).hits
    return [h.id for h in hits]


def test_versions_are_recorded(collections):
    assert collections.open("now").config.bm25.analyzer == ANALYZER_VERSION == 2
    assert collections.open("old").config.bm25.analyzer == 1
    assert collections.open("old").stats()["analyzer"] == 1


def test_scripts_are_found_inside_longer_text(collections):
    now = collections.open("now")
    assert _bm25(now, "熊猫")[0] == "zh"  # inside 大熊猫是... and 野生的熊猫主要...
    assert _bm25(now, "长城")[0] == "zh-other"
    assert _bm25(now, "パンダ")[0] == "ja"
    assert _bm25(now, "上野動物園")[0] == "ja"
    assert _bm25(now, "판다")[0] == "ko"
    assert _bm25(now, "الباندا")[0] == "ar"  # stored with a diacritic and with إ
    assert _bm25(now, "🐼")[0] == "emoji"
    assert _bm25(now, "👍")[0] == "emoji"
    assert _bm25(now, "runs bamboo")[0] == "en"  # English stemming still applies


def test_old_collection_answers_as_it_was_built(collections):
    old = collections.open("old")
    assert _bm25(old, "熊猫") == []  # the old analyzer made whole clauses terms: reindex to get bigrams
    assert _bm25(old, "野生的熊猫主要生活在四川的山区")[0] == "zh"
    assert _bm25(old, "runs bamboo")[0] == "en"
