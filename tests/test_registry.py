"""The card registry on SQLite and PostgreSQL: versions, activation, rollback, delete, audit, ownership."""
from __future__ import annotations

import threading

import pytest

from api.db import open_database
from experts.manifest import load_manifest
from experts.registry import Actor, CardConflict, CardForbidden, CardNotFound, CardRegistry
from tests.cards_helpers import snapshot, write_card

ADMIN = Actor("root", None, True)
ALPHA = Actor("alice", "alpha")
BETA = Actor("bob", "beta")
READER = Actor("rita", None, False)


@pytest.fixture
def registry(database_url, tmp_path):
    engine = open_database(database_url)
    yield CardRegistry(engine, tmp_path / "cards")
    engine.dispose()


@pytest.fixture
def card(tmp_path, tiny_adapter):
    """Makes card folders: card(version, **manifest fields) -> folder."""
    count = iter(range(1000))

    def make(version: str = "1.0.0", **fields):
        return write_card(tmp_path / f"source-{next(count)}", tiny_adapter, version=version, **fields)

    return make


def test_first_version_is_active_and_stored_immutably(registry, card):
    ref = registry.register(card("1.0.0"), ALPHA)
    assert ref.active and ref.version == "1.0.0" and ref.registered_by == "alice"
    assert ref.path == registry.store.root / "tiny" / "1.0.0"
    assert load_manifest(ref.path).owner == "alpha"
    weights = ref.artifact / "adapter_model.safetensors"
    assert weights.is_file() and not weights.stat().st_mode & 0o222  # read-only on disk
    second = registry.register(card("1.1.0"), ALPHA)
    assert not second.active and registry.get("tiny").version == "1.0.0"
    with pytest.raises(CardConflict, match="already registered"):
        registry.register(card("1.1.0", extra='collection = "x"'), ALPHA)
    assert [(r.version, r.active) for r in registry.versions("tiny")] == [("1.0.0", True), ("1.1.0", False)]
    assert [r.version for r in registry.list()] == ["1.0.0"]
    assert [r.version for r in registry.list(include_inactive=True)] == ["1.0.0", "1.1.0"]
    assert [r.version for r in registry.active_cards()] == ["1.0.0"]


def test_register_with_activate_and_from_a_yaml_manifest_file(registry, card):
    registry.register(card("1"), ALPHA)
    folder = card("2", fmt="yaml")
    ref = registry.register(folder / "card.yaml", ALPHA, activate=True)
    assert ref.active and (ref.path / "card.yaml").is_file() and not (ref.path / "card.toml").exists()
    assert registry.get("tiny").version == "2"


def test_activate_and_rollback_walk_the_activation_history(registry, card):
    for version in ("1", "2", "3"):
        registry.register(card(version), ALPHA, activate=True)
    assert registry.get("tiny").version == "3"
    assert registry.rollback("tiny", ALPHA).version == "2"
    assert registry.rollback("tiny", ALPHA).version == "1"
    with pytest.raises(CardConflict, match="no earlier active version"):
        registry.rollback("tiny", ALPHA)
    registry.activate("tiny", "3", ALPHA)
    assert registry.rollback("tiny", ALPHA).version == "1"
    with pytest.raises(CardNotFound, match="no version '9'"):
        registry.activate("tiny", "9", ALPHA)
    with pytest.raises(CardNotFound, match="no card named 'nope'"):
        registry.get("nope")


def test_delete_one_version_or_the_whole_card(registry, card):
    registry.register(card("1"), ALPHA)
    registry.register(card("2"), ALPHA)
    with pytest.raises(CardConflict, match="is the active version"):
        registry.delete("tiny", ALPHA, version="1")
    assert registry.delete("tiny", ALPHA, version="2") == ["2"]
    assert not (registry.store.root / "tiny" / "2").exists()
    assert [r.version for r in registry.versions("tiny")] == ["1"]
    registry.register(card("3"), ALPHA, activate=True)
    assert registry.rollback("tiny", ALPHA).version == "1"  # the deleted version 2 was never re-activated
    assert registry.delete("tiny", ADMIN) == ["1", "3"]
    assert not (registry.store.root / "tiny").exists()
    with pytest.raises(CardNotFound):
        registry.versions("tiny")
    assert registry.list(include_inactive=True) == []
    # the audit log outlives the card
    actions = [(e.action, e.version, e.actor, e.role) for e in registry.audit("tiny")]
    assert actions == [("delete", None, "root", "admin"), ("rollback", "1", "alice", "team:alpha"),
                       ("register", "3", "alice", "team:alpha"), ("delete", "2", "alice", "team:alpha"),
                       ("register", "2", "alice", "team:alpha"), ("register", "1", "alice", "team:alpha")]
    assert registry.audit()[0].details["versions"] == ["1", "3"]
    assert len(registry.audit(limit=2)) == 2


def test_update_manifest_makes_a_new_version_from_the_active_one(registry, card):
    original = registry.register(card("1"), ALPHA)
    fitted = original.manifest.model_copy(update={
        "version": "1-fit", "fusion": original.manifest.fusion.model_copy(update={"method": "product",
                                                                                  "weights": [0.7, 0.3]})})
    ref = registry.update_manifest("tiny", fitted, ALPHA)
    assert ref.active and ref.version == "1-fit" and ref.manifest.fusion.weights == [0.7, 0.3]
    assert load_manifest(ref.path).fusion.method == "product"
    assert load_manifest(original.path).fusion.method is None  # the old version is untouched
    old, new = (r.artifact / "adapter_model.safetensors" for r in (original, ref))
    assert old.read_bytes() == new.read_bytes()
    assert registry.audit("tiny")[0].action == "update"
    with pytest.raises(CardForbidden):
        registry.update_manifest("tiny", fitted.model_copy(update={"version": "1-fit2"}), BETA)


def test_ownership_rules(registry, card):
    with pytest.raises(CardForbidden, match="owner = 'beta'"):
        registry.register(card("1", owner="beta"), ALPHA)
    with pytest.raises(CardForbidden, match="cannot register"):
        registry.register(card("1"), READER)
    registry.register(card("1"), ALPHA)
    before = snapshot(registry)
    with pytest.raises(CardConflict, match="taken by team 'alpha'"):
        registry.register(card("2", owner="beta"), BETA)
    for attempt in (lambda: registry.activate("tiny", "1", BETA), lambda: registry.rollback("tiny", BETA),
                    lambda: registry.delete("tiny", BETA), lambda: registry.delete("tiny", READER)):
        with pytest.raises(CardForbidden, match="team 'alpha' owns"):
            attempt()
    with pytest.raises(CardForbidden, match="only an admin can move"):
        registry.register(card("2", owner="beta"), ALPHA)
    assert snapshot(registry) == before
    moved = registry.register(card("2", owner="beta"), ADMIN, activate=True)
    assert moved.manifest.owner == "beta" and registry.summary("tiny").owner == "beta"
    registry.register(card("3", owner="beta"), BETA)  # beta owns it now
    with pytest.raises(CardForbidden):
        registry.activate("tiny", "3", ALPHA)
    assert registry.activate("tiny", "3", BETA).active


def test_concurrent_registrations_of_one_version_store_it_once(registry, card):
    folders = [card("1"), card("1")]
    outcomes: list = []

    def register(folder):
        try:
            outcomes.append(registry.register(folder, ALPHA).version)
        except CardConflict as error:
            outcomes.append(error)

    threads = [threading.Thread(target=register, args=(folder,)) for folder in folders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(map(type, outcomes), key=str) == sorted([str, CardConflict], key=str)
    assert [r.version for r in registry.versions("tiny")] == ["1"]
    assert [p.name for p in (registry.store.root / "tiny").iterdir()] == ["1"]
    assert list(registry.store.staging.iterdir()) == []


def test_a_failing_publish_leaves_no_rows(registry, card, monkeypatch):
    registry.register(card("1"), ALPHA)
    before = snapshot(registry)

    def broken(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(registry.store, "publish", broken)
    with pytest.raises(OSError, match="disk full"):
        registry.register(card("2"), ALPHA, activate=True)
    assert snapshot(registry) == before
