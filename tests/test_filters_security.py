"""Issue 9 item 2: metadata filter fields are never SQL, and filter size is bounded (422 / exit 2)."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.app import create_app
from api.settings import ServiceSettings
from indexes.collection import Home
from indexes.config import CollectionConfig
from indexes.documents import SourceDocument
from indexes.filters import MAX_FIELDS, MAX_IN_VALUES, FilterError, compile_filter
from rag.retriever import Retriever
from rag.schemas import RetrievalRequest
from tests.helpers import run_mighty

INJECTION = "x'||char(34)) IS NULL AND 1=1 OR ('a"
RECURSIVE_CTE = ("x') IS NULL OR (WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM c "
                 "LIMIT 100000000) SELECT count(*) FROM c) > 0 OR ('a")
HOSTILE_FILTERS = {
    "quote injection": {INJECTION: "nomatch"},
    "recursive CTE": {RECURSIVE_CTE: "nomatch"},
    "json path syntax": {"kind[0]": "public"},
    "wildcard path": {"$.kind": "public"},
    "1,000 keys": {f"k{i}": i for i in range(1000)},
    "10,000 in values": {"kind": {"in": [f"v{i}" for i in range(10_000)]}},
    "nested operator": {"kind": {"in": [{"in": ["public"]}]}},
    "unknown operator": {"kind": {"$ne": "secret"}},
    "NaN value": {"kind": float("nan")},
}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("filters-home")
    collection = Home(root).create(CollectionConfig(name="kb"))
    with collection.writer() as writer:
        writer.upsert(SourceDocument("open-1", "Pandas eat bamboo in the misty mountains.", "Pandas",
                                     {"kind": "public", "info": {"lang": "en", "x-y": 1}}))
        writer.upsert(SourceDocument("secret-1", "Pandas hide the SECRETPANDA plans in bamboo.", "Plans",
                                     {"kind": "secret", "info": {"lang": "de"}, "名前": "機密"}))
        writer.commit()
    return root


@pytest.fixture(scope="module")
def retriever(home):
    return Retriever(Home(home).open("kb"))


def _ids(retriever, filters) -> set[str]:
    hits = retriever.search(RetrievalRequest(query="pandas bamboo", mode="bm25", filters=filters)).hits
    return {h.id for h in hits}


def test_legitimate_filters_still_select(retriever):
    assert _ids(retriever, None) == _ids(retriever, {}) == {"open-1", "secret-1"}  # {} is no filter
    assert _ids(retriever, {"kind": "public"}) == {"open-1"}
    assert _ids(retriever, {"info.lang": {"in": ["de", "fr"]}}) == {"secret-1"}
    assert _ids(retriever, {"info.x-y": 1}) == {"open-1"}
    assert _ids(retriever, {"名前": "機密"}) == {"secret-1"}
    assert _ids(retriever, {"doc_id": "secret-1", "title": "Plans"}) == {"secret-1"}


@pytest.mark.parametrize("name", sorted(HOSTILE_FILTERS))
def test_hostile_filters_are_refused_before_sql(retriever, name):
    with pytest.raises(ValidationError) as refused:
        RetrievalRequest(query="pandas", filters=HOSTILE_FILTERS[name])
    assert "filters" in str(refused.value)
    # the store refuses them too, for callers that skip the request model
    with pytest.raises(FilterError):
        retriever.collection.snapshot().masks(HOSTILE_FILTERS[name])


def test_injection_reason_names_the_rule():
    with pytest.raises(FilterError, match="invalid filter field .*letters, digits"):
        compile_filter({INJECTION: "nomatch"})
    with pytest.raises(FilterError, match=f"at most {MAX_FIELDS}"):
        compile_filter({f"k{i}": i for i in range(MAX_FIELDS + 1)})
    with pytest.raises(FilterError, match=f"at most {MAX_IN_VALUES}"):
        compile_filter({"k": {"in": list(range(MAX_IN_VALUES + 1))}})


def test_sql_text_holds_no_caller_input():
    sql, params = compile_filter({"kind": "public", "info.lang": {"in": ["de", "fr"]}, "title": "T"})
    assert "kind" not in sql and "lang" not in sql and "public" not in sql
    assert params == ['$."kind"', "public", '$."info"."lang"', "de", "fr", "T"]
    limits = compile_filter({f"k{i}": {"in": list(range(100))} for i in range(MAX_FIELDS)})
    assert len(limits[1]) == MAX_FIELDS * 101


def test_largest_allowed_filter_runs(retriever):
    wide = {f"k{i}": {"in": [f"v{j}" for j in range(100)]} for i in range(MAX_FIELDS - 1)}
    assert _ids(retriever, wide) == set()
    assert _ids(retriever, {"kind": {"in": ["public"] + [f"v{j}" for j in range(MAX_IN_VALUES - 1)]}}) == {"open-1"}


def test_rest_answers_422_with_the_reason(home, tmp_path):
    settings = ServiceSettings(home=home, database_url=f"sqlite:///{tmp_path}/k.db", no_auth=True)
    with TestClient(create_app(settings)) as client:
        for name, filters in HOSTILE_FILTERS.items():
            if name == "NaN value":
                continue  # JSON cannot carry NaN; the raw body below does
            for path in ("/v1/retrieve", "/v1/query"):
                response = client.post(path, json={"query": "pandas", "collection": "kb", "filters": filters})
                assert response.status_code == 422, (name, path, response.text[:300])
                assert "SECRETPANDA" not in response.text and "filters" in response.json()["detail"]
        raw = b'{"query": "pandas", "collection": "kb", "filters": {"kind": NaN}}'
        response = client.post("/v1/retrieve", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 422 and "finite" in response.json()["detail"]
        injected = client.post("/v1/retrieve", json={"query": "pandas", "collection": "kb",
                                                     "filters": {INJECTION: "nomatch"}})
        assert "invalid filter field" in injected.json()["detail"]
        fine = client.post("/v1/retrieve", json={"query": "pandas", "collection": "kb", "mode": "bm25",
                                                 "filters": {"kind": "public"}})
        assert fine.status_code == 200 and [h["id"] for h in fine.json()["hits"]] == ["open-1"]


def test_cli_exits_2_with_the_reason(home):
    result = run_mighty(home, "search", "pandas", "-c", "kb", "--filter", f'{{"{INJECTION}": "nomatch"}}')
    assert result.returncode == 2 and "invalid filter field" in result.stderr
    assert "SECRETPANDA" not in result.stdout and "Traceback" not in result.stderr
    deep = run_mighty(home, "search", "pandas", "-c", "kb", "--filter", "[" * 20_000 + "]" * 20_000)
    assert deep.returncode == 2 and "--filter" in deep.stderr and "Traceback" not in deep.stderr
