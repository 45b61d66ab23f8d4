"""Send the bad-input corpus to a real `mighty serve` and the real `mighty` command, and judge the answers.

Shared by `tests/test_adversarial.py` (one test per case) and `benchmarks/probe.py` (counts), so the
fixtures, the sending and the verdicts are the same in both. Cases only describe inputs and the
answers they must get; everything that needs a live process is here.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.adversarial import NEVER_IN_RESPONSE, CliCase, RestCase
from tests.helpers import REPO, free_port, start_server

COLLECTION = "demo"
SECRET_COLLECTION = "secret"
ROLES = {"admin": "admin", "team:alpha": "alpha", "reader": "viewer"}  # role -> key name
SEED_DOCUMENTS = (
    {"_id": "seed-otters", "title": "Otters", "text": "Sea otters hold hands while they sleep so they do not "
     "drift apart.", "metadata": {"kind": "animal"}},
    {"_id": "seed-octopus", "title": "Octopus", "text": "An octopus has three hearts and blue blood.",
     "metadata": {"kind": "animal"}},
    {"_id": "seed-glaciers", "title": "Glaciers", "text": "Glaciers carve valleys over millennia.",
     "metadata": {"kind": "geology"}},
    {"_id": "seed-tides", "title": "Tides", "text": "The moon drives ocean tides twice a day."},
    {"_id": "seed-crash", "title": "Crash safety", "text": "Every commit is atomic: a killed writer leaves the "
     "previous generation intact.", "metadata": {"kind": "engineering"}},
)
SECRET_DOCUMENT = {"_id": "secret-note", "title": "Private", "text": "SECRETMARKER: the other home's private note."}
#: the server's rate limit in the runner: job polls must never be what a case measures
_RATE_LIMIT = "100000"


@dataclass
class Fixtures:
    """Two homes on disk (the served one and one that must stay unreachable) and the served keys."""

    root: Path
    home: Path
    other_home: Path
    server_tmp: Path                         # TMPDIR of the server: where upload folders would be left
    pristine: Path                           # a copy of `home` as seeded, which CLI cases copy (the server writes `home`)
    keys: dict[str, str]                     # role -> token
    seeded: dict[str, dict[str, str]]        # collection -> {doc id: content hash}, as seeded


@dataclass
class Outcome:
    status: int
    text: str
    job: dict | None = None


@dataclass
class Tally:
    """What the probe prints: the must-be-zero counts and the failures behind them."""

    rest_tried: int = 0
    cli_tried: int = 0
    named_location: int = 0
    five_xx: int = 0
    failed_jobs: int = 0
    data_lost: int = 0
    breaches: int = 0
    failures: list[str] = field(default_factory=list)

    def add(self, case: RestCase | CliCase, outcome: Outcome, problems: list[str]) -> None:
        if isinstance(case, RestCase):
            self.rest_tried += 1
            self.five_xx += outcome.status >= 500 and outcome.status not in case.expect
            self.failed_jobs += bool(outcome.job and outcome.job.get("status") != "succeeded")
        else:
            self.cli_tried += 1
            self.named_location += case.names_location and not problems
        self.breaches += case.breach and bool(problems)
        self.failures.extend(f"{case.name}: {p}" for p in problems)


def _seed(home: Path, name: str, records: tuple[dict, ...]) -> dict[str, str]:
    from indexes.collection import Home
    from indexes.config import CollectionConfig
    from indexes.readers import document_from_record

    collection = Home(home).create(CollectionConfig(name=name))
    hashes = {}
    with collection.writer() as writer:
        for record in records:
            document = document_from_record(record, "seed")
            writer.upsert(document)
            hashes[document.id] = document.content_hash
        writer.commit()
    return hashes


def build_fixtures(root: Path) -> Fixtures:
    """The seeded home (collection `demo`, keys for every role) and the other home (`secret`)."""
    from api.db import make_sessions, open_database
    from api.keys import KeyStore
    from api.settings import ServiceSettings

    home, other_home, server_tmp = root / "home", root / "other-home", root / "server-tmp"
    server_tmp.mkdir(parents=True)
    seeded = {COLLECTION: _seed(home, COLLECTION, SEED_DOCUMENTS)}
    seeded_other = {SECRET_COLLECTION: _seed(other_home, SECRET_COLLECTION, (SECRET_DOCUMENT,))}
    engine = open_database(ServiceSettings(home=home).resolved_database_url())
    store = KeyStore(make_sessions(engine))
    keys = {role: store.create(name, role)[0] for role, name in ROLES.items()}
    engine.dispose()
    pristine = root / "pristine-home"
    shutil.copytree(home, pristine)
    return Fixtures(root, home, other_home, server_tmp, pristine, keys,
                    {**seeded, **{f"other:{k}": v for k, v in seeded_other.items()}})


@dataclass
class Server:
    base: str
    fixtures: Fixtures
    log: Path


@contextmanager
def running_server(fixtures: Fixtures, timeout: float = 300) -> Iterator[Server]:
    """One real `mighty serve --auth` on the seeded home, stopped afterwards."""
    port = free_port()
    env = {**os.environ, "MIGHTY_HOME": str(fixtures.home), "HF_HUB_OFFLINE": "1", "TMPDIR": str(fixtures.server_tmp),
           "MIGHTY_RATE_LIMIT_PER_MINUTE": _RATE_LIMIT, "MIGHTY_ANSWER_TOKENS": "16"}
    log = fixtures.root / "server.log"
    process = start_server(["serve", "--port", str(port), "--auth"], port, env, log, timeout)
    try:
        yield Server(f"http://127.0.0.1:{port}", fixtures, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def fill(value: Any, mapping: dict[str, str]) -> Any:
    """Replace the `{placeholder}`s in every string and bytes of a case value."""
    if isinstance(value, str):
        for key, replacement in mapping.items():
            value = value.replace("{" + key + "}", replacement)
        return value
    if isinstance(value, bytes):
        for key, replacement in mapping.items():
            value = value.replace(b"{" + key.encode() + b"}", replacement.encode())
        return value
    if isinstance(value, dict):
        return {fill(k, mapping): fill(v, mapping) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(fill(v, mapping) for v in value)
    return value


def _mapping(fixtures: Fixtures, tmp: Path) -> dict[str, str]:
    return {"collection": COLLECTION, "other_home": str(fixtures.other_home), "tmp": str(tmp)}


def send_rest(server: Server, case: RestCase, tmp: Path) -> Outcome:
    """Send one case; a 202 job is followed until it finishes (a failed job is a failure too)."""
    mapping = _mapping(server.fixtures, tmp)
    headers = fill(dict(case.headers), mapping)
    if case.role:
        headers["Authorization"] = f"Bearer {server.fixtures.keys[case.role]}"
    request: dict[str, Any] = {"headers": headers}
    if case.json is not None:
        request["json"] = fill(case.json, mapping)
    if case.content is not None:
        content = fill(case.content, mapping)
        request["content"] = _chunks(content) if case.chunked else content
    if case.files:
        request["files"] = [(form, (fill(name, mapping), fill(data, mapping))) for form, name, data in case.files]
    if case.data is not None:
        request["data"] = fill(case.data, mapping)
    with httpx.Client(base_url=server.base, timeout=300) as client:
        response = client.request(case.method, fill(case.path, mapping), **request)
        job = None
        if response.status_code == 202:
            job = _finished_job(client, headers, response)
    return Outcome(response.status_code, response.text, job)


def _chunks(content: bytes, size: int = 1 << 20) -> Iterator[bytes]:
    for start in range(0, len(content), size):  # a generator body: sent chunked, no Content-Length
        yield content[start:start + size]


def _finished_job(client: httpx.Client, headers: dict, response: httpx.Response) -> dict | None:
    try:
        job = response.json()
    except ValueError:
        return None
    if not isinstance(job, dict) or "id" not in job or "status" not in job:
        return None
    deadline = time.time() + 300
    while job.get("status") not in ("succeeded", "failed") and time.time() < deadline:
        time.sleep(0.2)
        job = client.get(f"/v1/jobs/{job['id']}", headers=headers).json()
    return job


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _haystack(text: str) -> str:
    """The raw body and, for JSON, its decoded strings (so a reason with quotes matches as written)."""
    try:
        return "\n".join([text, *_strings(json.loads(text))])
    except ValueError:
        return text


def rest_problems(case: RestCase, outcome: Outcome) -> list[str]:
    problems = []
    body = _haystack(outcome.text)
    if outcome.status not in case.expect:
        problems.append(f"status {outcome.status}, expected one of {case.expect}: {outcome.text[:300]}")
    problems += [f"response leaks {needle!r}" for needle in NEVER_IN_RESPONSE if needle in body]
    problems += [f"response lacks {needle!r}: {outcome.text[:300]}" for needle in case.must_contain if needle not in body]
    problems += [f"response contains {needle!r}" for needle in case.must_not_contain if needle in body]
    if outcome.job is not None:
        job_text = _haystack(json.dumps(outcome.job, ensure_ascii=False))
        if outcome.job.get("status") != "succeeded":
            problems.append(f"job ended {outcome.job.get('status')!r}: {outcome.job.get('error')}")
        problems += [f"job lacks {needle!r}: {job_text[:300]}" for needle in case.job_must_contain
                     if needle not in job_text]
        problems += [f"job leaks {needle!r}" for needle in NEVER_IN_RESPONSE if needle in job_text]
    return problems


def run_cli(fixtures: Fixtures, case: CliCase, workdir: Path) -> tuple[Outcome, int]:
    """Run the real command in a copy of the seeded home; returns its outcome and the seeded documents lost."""
    home, tmp = workdir / "home", workdir / "tmp"
    shutil.copytree(fixtures.pristine, home)
    tmp.mkdir(parents=True)
    mapping = _mapping(fixtures, tmp)
    for relative, content in case.files.items():
        path = tmp / fill(relative, mapping)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(fill(content, mapping))
    for relative, target in case.symlinks.items():
        link = tmp / fill(relative, mapping)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(fill(target, mapping))
    env = {**os.environ, "MIGHTY_HOME": str(home), "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "TMPDIR": str(tmp)}
    result = subprocess.run([sys.executable, "-m", "api.cli.main", *fill(case.args, mapping)], input=case.stdin or b"",
                            capture_output=True, cwd=REPO, env=env, timeout=600)
    text = result.stdout.decode("utf-8", "replace") + result.stderr.decode("utf-8", "replace")
    lost = lost_documents(home, COLLECTION, fixtures.seeded[COLLECTION])
    return Outcome(result.returncode, text), len(lost)


def cli_problems(case: CliCase, outcome: Outcome, lost: int) -> list[str]:
    problems = []
    if outcome.status not in case.expect_exit:
        problems.append(f"exit {outcome.status}, expected one of {case.expect_exit}: {outcome.text[-600:]}")
    problems += [f"output lacks {needle!r}: {outcome.text[-600:]}" for needle in case.must_contain
                 if needle not in outcome.text]
    problems += [f"output contains {needle!r}" for needle in case.must_not_contain if needle in outcome.text]
    if lost:
        problems.append(f"{lost} seeded document(s) lost or changed")
    return problems


def live_documents(home: Path, name: str) -> dict[str, str]:
    """Every live document of a collection on disk: id -> content hash."""
    from indexes.collection import Home

    snapshot = Home(home).open(name).load_snapshot()
    found = {}
    for segment, live in zip(snapshot.segments, snapshot.live):
        for entry in segment.documents():
            if live is None or live[entry.first_row]:
                found[entry.doc_id] = entry.hash
    return found


def lost_documents(home: Path, name: str, expected: dict[str, str]) -> list[str]:
    """Seeded ids that are gone or whose content changed (documents added by cases are fine)."""
    present = live_documents(home, name)
    return [doc_id for doc_id, digest in expected.items() if present.get(doc_id) != digest]


def final_problems(server: Server) -> tuple[list[str], int]:
    """After every case: seeded data intact in both homes, server healthy, no upload folder left behind."""
    fixtures = server.fixtures
    lost = lost_documents(fixtures.home, COLLECTION, fixtures.seeded[COLLECTION])
    lost += lost_documents(fixtures.other_home, SECRET_COLLECTION, fixtures.seeded[f"other:{SECRET_COLLECTION}"])
    problems = [f"seeded document {doc_id!r} lost or changed" for doc_id in lost]
    try:
        health = httpx.get(f"{server.base}/healthz", timeout=30).status_code
    except httpx.HTTPError as exc:
        health = f"unreachable ({exc})"
    if health != 200:
        problems.append(f"server unhealthy after the corpus: /healthz {health}")
    left = sorted(p.name for p in fixtures.server_tmp.glob("mighty-upload-*"))
    if left:
        problems.append(f"temporary upload folders left behind: {left}")
    return problems, len(lost)
