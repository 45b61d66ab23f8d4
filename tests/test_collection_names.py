"""Issue 9 item 1: collection names follow one strict rule at the indexes boundary, for every caller.

The attacks reproduced: a reader key naming another home's collection by absolute path or `../`
(which returned that home's documents), and `tiny/./.`-style aliases that each took a cache entry.
"""
from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import ServiceSettings
from experts.manifest import ManifestError, parse_manifest
from indexes.collection import CollectionNotFound, Home
from indexes.config import CollectionConfig
from indexes.documents import SourceDocument
from indexes.names import InvalidCollectionName, check_collection_name
from tests.helpers import run_mighty

GOOD = ["demo", "a", "0", "eval-3f2a", "team_alpha-notes", "x" * 64]
BAD = ["", "Demo", "a.b", ".", "..", "../demo", "tiny/./.", "demo/", "/abs/path", "-lead", "_lead", "x" * 65,
       "caf\u00e9", "a b", "a\x00b", "demo\n", "C:\\x", "%2e%2e"]


@pytest.fixture(scope="module")
def two_homes(tmp_path_factory):
    """`home` holds `demo`; `other` holds `secret`, whose only document says SECRETMARKER."""
    root = tmp_path_factory.mktemp("names")
    secret = Home(root / "other").create(CollectionConfig(name="secret"))
    with secret.writer() as writer:
        writer.upsert(SourceDocument("s1", "SECRETMARKER lives only in the other home", "", {}, "test"))
        writer.commit()
    demo = Home(root / "home").create(CollectionConfig(name="demo"))
    with demo.writer() as writer:
        writer.upsert(SourceDocument("d1", "crash safety keeps serving queries", "", {}, "test"))
        writer.commit()
    return root / "home", root / "other"


@pytest.mark.parametrize("name", GOOD)
def test_the_rule_accepts_plain_names(name):
    assert check_collection_name(name) == name


@pytest.mark.parametrize("name", BAD)
def test_the_rule_refuses_paths_aliases_and_case_variants(name):
    with pytest.raises(InvalidCollectionName, match="invalid collection name"):
        check_collection_name(name)


def test_home_never_opens_or_deletes_a_path_outside_itself(two_homes):
    home_root, other = two_homes
    home = Home(home_root)
    for name in (str(other / "collections" / "secret"), "../../other/collections/secret", "demo/../demo"):
        with pytest.raises(InvalidCollectionName):
            home.open(name)
        with pytest.raises(InvalidCollectionName):
            home.delete(name)
    assert (other / "collections" / "secret" / "collection.json").exists()  # nothing was touched
    with pytest.raises(InvalidCollectionName):
        home.create(CollectionConfig.model_construct(name="../escape"))
    assert not (home_root / "escape").exists()


def test_a_symlinked_collection_folder_is_refused(two_homes, tmp_path):
    """Defence in depth: even a valid name must resolve to a folder directly inside the home."""
    home_root, other = two_homes
    root = tmp_path / "linked"
    (root / "collections").mkdir(parents=True)
    os.symlink(other / "collections" / "secret", root / "collections" / "stolen")
    with pytest.raises(InvalidCollectionName, match="does not resolve inside"):
        Home(root).open("stolen")


def test_card_manifests_name_collections_by_the_same_rule():
    text = ('name = "c"\nversion = "1"\ndomain = "d"\ndescription = "d"\nowner = "qa"\n'
            'collection = "../other/collections/secret"\n[model]\nbase = "smollm2-135m-instruct"\nadapter = "a"\n')
    with pytest.raises(ManifestError, match=r"card.toml:6: collection: .*invalid collection name"):
        parse_manifest(text, "card.toml")
    assert parse_manifest(text.replace("../other/collections/secret", "demo"), "card.toml").collection == "demo"


@pytest.fixture(scope="module")
def client(two_homes, tmp_path_factory):
    home_root, _ = two_homes
    settings = ServiceSettings(home=home_root, no_auth=True,
                               database_url=f"sqlite:///{tmp_path_factory.mktemp('db')}/k.db")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_rest_refuses_traversal_in_bodies_with_422_and_no_data(client, two_homes):
    _, other = two_homes
    for name in (str(other / "collections" / "secret"), "../../other/collections/secret", "../other"):
        for path, body in (("/v1/retrieve", {"query": "SECRETMARKER", "collection": name}),
                           ("/v1/query", {"query": "SECRETMARKER", "collection": name, "cards": "none"}),
                           ("/v1/collections", {"name": name})):
            answer = client.post(path, json=body)
            assert answer.status_code == 422, (path, name, answer.text)
            assert "invalid collection name" in answer.text and "SECRETMARKER" not in answer.text.replace(
                '"query":"SECRETMARKER"', "")
    assert client.post("/v1/retrieve", json={"query": "crash", "collection": "demo"}).status_code == 200


def test_rest_refuses_invalid_names_in_paths_with_422_not_404(client):
    for name in ("Demo", "a.b", "..%2F..%2Fother", "demo%00"):
        for method in ("GET", "DELETE"):
            answer = client.request(method, f"/v1/collections/{name}")
            assert answer.status_code in (404, 422), (method, name, answer.text)
            if answer.status_code == 404:  # only when the router itself found no route (an encoded '/')
                assert "unknown collection" not in answer.text
        upload = client.post(f"/v1/collections/{name}/files", files={"files": ("x.txt", b"injected")})
        assert upload.status_code in (404, 422)
    answer = client.get("/v1/collections/Demo")
    assert answer.status_code == 422 and "invalid collection name" in answer.json()["detail"]
    assert client.get("/v1/collections/nosuch").status_code == 404  # a valid, absent name is still 404


def test_aliases_are_refused_so_one_collection_is_one_cache_entry(client):
    state = client.app.state.mighty
    aliases = ["demo/.", "demo/./.", "./demo", "DEMO", "Demo", "demo/", "collections/../collections/demo"]
    aliases += [f"demo{'/.' * n}" for n in range(1, 14)]
    for alias in aliases:
        assert client.post("/v1/retrieve", json={"query": "crash", "collection": alias}).status_code == 422
    assert client.post("/v1/retrieve", json={"query": "crash", "collection": "demo"}).status_code == 200
    assert set(state.home._open) == {"demo"} and set(state._retrievers) == {"demo"}


def test_cli_refuses_invalid_names_with_exit_2(two_homes):
    home_root, other = two_homes
    for args in (("search", "SECRETMARKER", "-c", str(other / "collections" / "secret")),
                 ("index", "stats", "../other/collections/secret"),
                 ("index", "drop", "../other/collections/secret", "--yes"),
                 ("index", "delete", "s1", "-c", "../../other/collections/secret")):
        result = run_mighty(home_root, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "invalid collection name" in result.stderr and "SECRETMARKER" not in result.stdout + result.stderr
        assert "Traceback" not in result.stderr
    assert (other / "collections" / "secret" / "collection.json").exists()


def test_langchain_adapter_opens_collections_through_home(two_homes):
    from rag.langchain import MightyRetriever

    home_root, other = two_homes
    with pytest.raises(InvalidCollectionName):
        MightyRetriever.from_home(home_root, str(other / "collections" / "secret"))
    with pytest.raises(CollectionNotFound):
        MightyRetriever.from_home(home_root, "secret")
    assert MightyRetriever.from_home(home_root, "demo", mode="bm25").invoke("crash")[0].metadata["id"] == "d1"


def test_folders_from_before_the_rule_are_listed_as_broken_not_fatal(two_homes, tmp_path):
    import shutil

    home_root, _ = two_homes
    shutil.copytree(home_root / "collections" / "demo", tmp_path / "collections" / "Old.Name")
    shutil.copytree(home_root / "collections" / "demo", tmp_path / "collections" / "demo")
    home = Home(tmp_path)
    rows = {row["name"]: row for row in (home.describe(name) for name in home.names())}
    assert "rename its folder" in rows["Old.Name"]["broken"] and rows["demo"]["documents"] == 1
