"""`mighty cards ...` end to end in real subprocesses: register, list, show, activate, rollback, delete, audit."""
from __future__ import annotations

import json

import pytest

from tests.cards_helpers import write_card
from tests.helpers import run_mighty

pytestmark = pytest.mark.slow


def test_card_lifecycle_from_the_cli(tmp_path, tiny_adapter):
    home = tmp_path / "home"
    env = {"USER": "operator-ann"}

    def mighty(*args: str):
        return run_mighty(home, "cards", *args, env=env)

    first = mighty("register", str(write_card(tmp_path / "v1", tiny_adapter, version="1.0.0")))
    assert first.returncode == 0, first.stderr
    assert "registered tiny@1.0.0 (active)" in first.stdout

    broken = write_card(tmp_path / "broken", tiny_adapter, version="3.0.0", extra="colour = 'blue'")
    refused = mighty("register", str(broken))
    assert refused.returncode == 1
    assert f"{broken / 'card.toml'}:6: colour: Extra inputs are not permitted" in " ".join(refused.stderr.split())

    second = mighty("register", str(write_card(tmp_path / "v2", tiny_adapter, version="2.0.0", fmt="yaml")))
    assert second.returncode == 0, second.stderr
    assert "registered tiny@2.0.0 (inactive; activate with: mighty cards activate tiny 2.0.0)" in second.stdout

    listed = mighty("list")
    assert listed.returncode == 0 and "tiny" in listed.stdout and "1.0.0" in listed.stdout
    assert "2.0.0" not in listed.stdout
    everything = json.loads(mighty("list", "--all", "--json").stdout)
    assert [(c["version"], c["active"]) for c in everything] == [("1.0.0", True), ("2.0.0", False)]

    assert mighty("activate", "tiny", "2.0.0").returncode == 0
    assert json.loads(mighty("show", "tiny", "--json").stdout)["active_version"] == "2.0.0"
    rolled = mighty("rollback", "tiny")
    assert rolled.returncode == 0 and "tiny@1.0.0 is active" in rolled.stdout
    shown = mighty("show", "tiny")
    assert "owned by alpha; active version: 1.0.0" in shown.stdout

    active_delete = mighty("delete", "tiny", "--version", "1.0.0", "--yes")
    assert active_delete.returncode == 1 and "is the active version" in active_delete.stderr
    assert mighty("delete", "tiny", "--version", "2.0.0", "--yes").returncode == 0
    unconfirmed = mighty("delete", "tiny")
    assert unconfirmed.returncode == 1 and "pass --yes" in unconfirmed.stderr
    assert mighty("activate", "tiny", "9.9").returncode == 1

    audit = json.loads(mighty("audit", "tiny", "--json").stdout)
    assert [(e["action"], e["version"]) for e in audit] == [
        ("delete", "2.0.0"), ("rollback", "1.0.0"), ("activate", "2.0.0"), ("register", "2.0.0"),
        ("register", "1.0.0")]
    assert {(e["actor"], e["role"]) for e in audit} == {("operator-ann", "admin")}

    assert mighty("delete", "tiny", "--yes").returncode == 0
    assert json.loads(mighty("list", "--all", "--json").stdout) == []
    assert not (home / "cards" / "tiny").exists()
    missing = mighty("show", "tiny")
    assert missing.returncode == 1 and "no card named 'tiny'" in missing.stderr
