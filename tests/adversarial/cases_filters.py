"""Bad inputs of issue 9 items 2, 5 and 11: filter injection and size, NaN metadata, CJK/emoji text.

Injection attempts are `breach=True`: an answer other than the refusal (a 2xx with hits) counts as a
breach. Bodies JSON cannot encode (NaN, Infinity) are raw `content`; they are refused by request
validation before the collection is looked up, so they name `demo` rather than a placeholder.
"""
from __future__ import annotations

import json

from tests.adversarial import CliCase, RestCase

INJECTION = "x'||char(34)) IS NULL AND 1=1 OR ('a"
RECURSIVE_CTE = ("x') IS NULL OR (WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM c "
                 "LIMIT 100000000) SELECT count(*) FROM c) > 0 OR ('a")
HOSTILE_KEYS = {"quote": INJECTION, "cte": RECURSIVE_CTE, "dollar-path": "$.kind", "bracket": "kind[0]",
                "wildcard": "kind.*", "comment": "kind/**/", "space": "kind OR 1", "semicolon": "kind;DROP TABLE chunks",
                "double-quote": 'kind"', "empty-segment": "kind..x", "newline": "kind\nx"}
TOO_BIG = {"1000-keys": {f"k{i}": i for i in range(1000)},
           "10000-in-values": {"kind": {"in": [f"v{i}" for i in range(10_000)]}},
           "long-key": {"k" * 5000: 1},
           "deep-path": {".".join(["a"] * 50): 1}}
MALFORMED = {"unknown-operator": {"kind": {"$ne": "x"}}, "empty-in": {"kind": {"in": []}},
             "object-value": {"kind": {"in": [{"in": ["x"]}]}}, "list-value": {"kind": ["a"]},
             "null-value": {"kind": None}, "in-not-a-list": {"kind": {"in": "abc"}}}
NAN_LINES = (b'{"_id": "n1", "text": "not a number", "metadata": {"x": NaN}}\n'
             b'{"_id": "n2", "text": "infinite", "metadata": {"deep": [1, {"y": -Infinity}]}}\n'
             b'{"_id": "n3", "text": "overflow", "metadata": {"x": 1e999}}\n')


def _retrieve(filters, path: str = "/v1/retrieve") -> dict:
    return {"query": "pandas", "collection": "{collection}", "filters": filters}


REST_CASES = [
    *(RestCase(f"filter-key-{name}{suffix}", "POST", path, json=_retrieve({key: "nomatch"}, path), role="reader",
               expect=(422,), must_contain=("invalid filter field",), must_not_contain=('"hits"', '"answer"'),
               breach=True)
      for name, key in HOSTILE_KEYS.items() for suffix, path in (("", "/v1/retrieve"), ("-query", "/v1/query"))),
    *(RestCase(f"filter-size-{name}", "POST", "/v1/retrieve", json=_retrieve(filters), role="reader",
               expect=(422,), must_contain=("at most",), must_not_contain=('"hits"',))
      for name, filters in TOO_BIG.items()),
    *(RestCase(f"filter-malformed-{name}", "POST", "/v1/retrieve", json=_retrieve(filters), role="reader",
               expect=(422,), must_not_contain=('"hits"',))
      for name, filters in MALFORMED.items()),
    RestCase("filter-nan-value", "POST", "/v1/retrieve", role="reader", expect=(422,), must_contain=("finite",),
             content=b'{"query": "pandas", "collection": "demo", "filters": {"kind": NaN}}',
             headers={"content-type": "application/json"}),
    RestCase("documents-nan-metadata", "POST", "/v1/collections/{collection}/documents", expect=(422,),
             content=b'{"documents": [{"_id": "n", "text": "t", "metadata": {"x": NaN}}]}',
             headers={"content-type": "application/json"}, must_contain=("metadata.x is nan", "finite")),
    RestCase("documents-infinity-nested-metadata", "POST", "/v1/collections/{collection}/documents", expect=(422,),
             content=b'{"documents": [{"_id": "n", "text": "t", "metadata": {"a": [{"b": -Infinity}]}}]}',
             headers={"content-type": "application/json"}, must_contain=("metadata.a[0].b is -inf",)),
    RestCase("files-jsonl-nan-metadata", "POST", "/v1/collections/{collection}/files", expect=(422,),
             files=(("files", "nan.jsonl", NAN_LINES),), must_contain=("finite",)),
    RestCase("retrieve-cjk-emoji-arabic-query", "POST", "/v1/retrieve", role="reader", expect=(200,),
             json={"query": "熊猫 パンダ 판다 🐼 البَاندا", "collection": "{collection}", "mode": "bm25"}),
]

CLI_CASES = [
    CliCase("cli-filter-key-quote", ("search", "pandas", "-c", "{collection}", "--filter",
                                     json.dumps({INJECTION: "nomatch"})),
            expect_exit=(2,), must_contain=("invalid filter field",), breach=True),
    CliCase("cli-filter-key-cte", ("search", "pandas", "-c", "{collection}", "--filter",
                                   json.dumps({RECURSIVE_CTE: "nomatch"})),
            expect_exit=(2,), must_contain=("invalid filter field",), breach=True),
    CliCase("cli-filter-1000-keys", ("search", "pandas", "-c", "{collection}", "--filter",
                                     json.dumps(TOO_BIG["1000-keys"])), expect_exit=(2,), must_contain=("at most 32",)),
    CliCase("cli-filter-10000-in-values", ("search", "pandas", "-c", "{collection}", "--filter",
                                           json.dumps(TOO_BIG["10000-in-values"])),
            expect_exit=(2,), must_contain=("at most 1000",)),
    CliCase("cli-filter-nested-too-deep", ("search", "pandas", "-c", "{collection}", "--filter",
                                           "[" * 20_000 + "]" * 20_000), expect_exit=(2,), must_contain=("--filter",)),
    CliCase("cli-filter-nan-value", ("search", "pandas", "-c", "{collection}", "--filter", '{"kind": NaN}'),
            expect_exit=(2,), must_contain=("finite",)),
    CliCase("cli-index-nan-metadata", ("index", "add", "{tmp}/nan.jsonl", "--collection", "{collection}"),
            files={"nan.jsonl": b'{"_id": "fine", "text": "a finite document"}\n' + NAN_LINES},
            expect_exit=(1,), must_contain=("nan.jsonl:2", "nan.jsonl:3", "nan.jsonl:4", "finite"),
            names_location=True),
]
