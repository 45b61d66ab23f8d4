"""Metadata filters: validated once, then compiled to SQL whose text never contains caller input.

A filter is `{"field": value, "other.nested": {"in": [v1, v2]}}`: every condition must hold.
Field names come from clients (REST bodies, `--filter`, the LangChain adapter), so they are held to
one strict pattern here, the module every path reaches before SQLite, and then travel to SQLite only
as bound parameters (the JSON path of `json_extract(metadata, ?)`), never as SQL text. The size of
a filter is bounded too, so a filter cannot build an expression SQLite refuses (or spends seconds
on): those are the client's mistake, reported as a `FilterError` (a `ValueError`) with the reason.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

Filter = dict[str, Any]

MAX_FIELDS = 32             # conditions in one filter
MAX_IN_VALUES = 1_000       # values of one `in` list
MAX_VALUES = 4_000          # values across the whole filter (bound parameters)
MAX_FIELD_CHARS = 200       # length of one field path
MAX_FIELD_DEPTH = 8         # nested levels of a dotted path (`a.b.c` is 3)
MAX_VALUE_CHARS = 4_096     # length of one string value
OPERATORS = ("in",)         # the only operator; new ones go here and in `compile_filter`

# a field is one or more names joined by '.', each made of letters, digits, '_' or '-' (any script)
_FIELD = re.compile(r"[\w-]+(?:\.[\w-]+)*")
# fields stored in their own columns rather than inside the metadata JSON
COLUMNS = {"doc_id": "doc_id", "title": "title"}
_SCALARS = (str, int, float, bool)


class FilterError(ValueError):
    """A filter the store will not run, with the reason a client can act on."""


def _shown(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def validate_filter(where: Any) -> Filter:
    """Return `where` unchanged if it is a filter the store runs; raise `FilterError` otherwise.

    Works on raw parsed JSON, so request models can call it before their own type checks."""
    if not isinstance(where, dict):
        raise FilterError("a filter must be an object of field -> value or {'in': [values]}")
    if len(where) > MAX_FIELDS:
        raise FilterError(f"a filter has {len(where)} fields; at most {MAX_FIELDS} are allowed")
    total = 0
    for key, condition in where.items():
        check_field(key)
        if isinstance(condition, dict):
            if set(condition) - set(OPERATORS) or not condition:
                unknown = ", ".join(_shown(str(op), 20) for op in list(condition)[:5]) or "none"
                raise FilterError(f"filter on {_shown(key)}: unsupported operator ({unknown}); "
                                  f"use a value or {{'in': [values]}}")
            values = condition["in"]
            if not isinstance(values, list) or not values:
                raise FilterError(f"filter on {_shown(key)}: 'in' takes a non-empty list of values")
            if len(values) > MAX_IN_VALUES:
                raise FilterError(f"filter on {_shown(key)}: 'in' has {len(values)} values; "
                                  f"at most {MAX_IN_VALUES} are allowed")
        else:
            values = [condition]
        for value in values:
            _check_value(key, value)
        total += len(values)
    if total > MAX_VALUES:
        raise FilterError(f"a filter has {total} values in all; at most {MAX_VALUES} are allowed")
    return where


def check_field(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise FilterError(f"invalid filter field {key!r}: a field is a non-empty string")
    if len(key) > MAX_FIELD_CHARS or key.count(".") >= MAX_FIELD_DEPTH or not _FIELD.fullmatch(key):
        raise FilterError(f"invalid filter field {_shown(key)}: use letters, digits, '_' or '-', with '.' "
                          f"between nested fields (at most {MAX_FIELD_DEPTH} levels, {MAX_FIELD_CHARS} characters)")
    return key


def _check_value(key: str, value: Any) -> None:
    if not isinstance(value, _SCALARS):
        raise FilterError(f"filter on {_shown(key)}: values must be strings, numbers or booleans")
    if isinstance(value, float) and not math.isfinite(value):
        raise FilterError(f"filter on {_shown(key)}: {value} is not a finite number")
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        raise FilterError(f"filter on {_shown(key)}: a value is {len(value)} characters; "
                          f"at most {MAX_VALUE_CHARS} are allowed")


def json_path(key: str) -> str:
    """`a.b` -> `$."a"."b"`: each name quoted, so it is read as a key and never as path syntax."""
    return "$" + "".join(f'."{name}"' for name in check_field(key).split("."))


def compile_filter(where: Filter, tolerant: bool = False) -> tuple[str, list[Any]]:
    """A WHERE clause (constant text) and its bound parameters.

    `tolerant` reads metadata that SQLite's JSON parser rejects (NaN or Infinity, stored before
    ingest refused them) through `extract_metadata`, registered on the connection as
    `mighty_json_extract`, so one such row cannot make every filtered search fail."""
    if not validate_filter(where):
        raise FilterError("an empty filter has no SQL form: callers treat it as no filter")
    clauses, params = [], []
    for key, condition in where.items():
        values = condition["in"] if isinstance(condition, dict) else [condition]
        column = COLUMNS.get(key)
        if column is None:
            path = json_path(key)
            if tolerant:
                column = ("CASE WHEN json_valid(metadata) THEN json_extract(metadata, ?) "
                          "ELSE mighty_json_extract(metadata, ?) END")
                params.extend((path, path))
            else:
                column = "json_extract(metadata, ?)"
                params.append(path)
        clauses.append(f"{column} IN ({','.join('?' * len(values))})")
        params.extend(int(v) if isinstance(v, bool) else v for v in values)
    return " AND ".join(clauses), params


def extract_metadata(metadata: str, path: str) -> Any:
    """What `json_extract(metadata, path)` would answer, for metadata SQLite cannot parse: non-finite
    numbers read as NULL, objects and arrays as JSON text, booleans as 1/0."""
    try:
        value: Any = json.loads(metadata, parse_constant=lambda _: None)
    except ValueError:
        return None
    for name in re.findall(r'\."([^"]*)"', path):
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return value
