"""The bad-input corpus: every hostile or careless input Mighty has been probed with, as data.

Adding a hole found later is one line in one of the `cases_*.py` modules: a `RestCase` or a `CliCase`
with what the answer must (and must not) be. `tests/test_adversarial.py` sends every case to a real
`mighty serve` process and to the real `mighty` command; `benchmarks/probe.py` sends the same corpus
and prints the counts (inputs tried, errors naming file:line, 5xx seen, data lost, breaches).

Placeholders filled in by the runner, in any string of a case (paths, JSON, args, file contents):
  {collection}  a seeded collection the case may read (and, with role admin, write)
  {other_home}  the absolute path of a second Mighty home that must never be reachable
  {tmp}         a private scratch folder of the case (CLI cases: where `files` are written)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: statuses a bad request may get: a clear client error, never a 5xx
CLIENT_ERRORS = (400, 401, 403, 404, 405, 409, 413, 415, 422, 429)
#: text that must never reach a client: tracebacks and server-side paths of the code
NEVER_IN_RESPONSE = ("Traceback (most recent call last)", 'File "/', "site-packages")


@dataclass(frozen=True)
class RestCase:
    """One request. `json` is sent as JSON; `content` as the raw body (for bodies JSON cannot encode)."""

    name: str
    method: str
    path: str
    json: Any = None
    content: bytes | None = None
    files: tuple[tuple[str, str, bytes], ...] = ()     # (form field, filename, bytes) multipart parts
    data: dict[str, str] | None = None                  # multipart form fields
    headers: dict[str, str] = field(default_factory=dict)
    role: str | None = "admin"                          # key to send: admin, team:alpha, reader, or None
    expect: tuple[int, ...] = CLIENT_ERRORS             # the status must be one of these
    must_contain: tuple[str, ...] = ()                  # substrings of the body (e.g. the reason)
    must_not_contain: tuple[str, ...] = ()              # substrings that would show a breach/leak
    breach: bool = False                                # a traversal/injection attempt: counted as such
    chunked: bool = False                               # send `content` chunked (no Content-Length)
    job_must_contain: tuple[str, ...] = ()              # substrings of the finished job a 202 started


@dataclass(frozen=True)
class CliCase:
    """One `mighty` invocation in a fresh home that holds the seeded collection."""

    name: str
    args: tuple[str, ...]
    stdin: bytes | None = None
    files: dict[str, bytes] = field(default_factory=dict)  # relative path under {tmp} -> content
    symlinks: dict[str, str] = field(default_factory=dict)  # relative path under {tmp} -> target
    expect_exit: tuple[int, ...] = (1, 2)
    must_contain: tuple[str, ...] = ()                  # substrings of stdout+stderr (e.g. "x.jsonl:3")
    must_not_contain: tuple[str, ...] = ("Traceback (most recent call last)",)
    names_location: bool = False                        # the error must name file:line (counted)
    breach: bool = False


def all_cases() -> tuple[list[RestCase], list[CliCase]]:
    """Every case of every `cases_*` module, in a stable order."""
    import importlib
    import pkgutil

    rest: list[RestCase] = []
    cli: list[CliCase] = []
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.startswith("cases_")):
        loaded = importlib.import_module(f"{__name__}.{module}")
        rest.extend(getattr(loaded, "REST_CASES", ()))
        cli.extend(getattr(loaded, "CLI_CASES", ()))
    names = [c.name for c in rest] + [c.name for c in cli]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"adversarial case names must be unique: {sorted(duplicates)}")
    return rest, cli
