"""Cards over REST on a real `mighty serve` process: multipart upload, ownership by key, bad uploads."""
from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.cards_helpers import manifest_text
from tests.helpers import free_port, run_mighty, start_server

pytestmark = pytest.mark.slow
ROLES = {"root": "admin", "alpha": "team:alpha", "beta": "team:beta", "viewer": "reader"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("cards-api") / "home"
    keys = {}
    for name, role in ROLES.items():
        created = run_mighty(home, "keys", "create", name, "--role", role)
        assert created.returncode == 0, created.stderr
        keys[name] = created.stdout.strip()
    port = free_port()
    # JSON bodies are capped far below the adapter's size: card uploads must use their own limit.
    env = {**os.environ, "MIGHTY_HOME": str(home), "HF_HUB_OFFLINE": "1", "MIGHTY_MAX_BODY_BYTES": "262144",
           "MIGHTY_MAX_CARD_UPLOAD_BYTES": str(4 * 1024 * 1024)}
    process = start_server(["serve", "--port", str(port), "--auth"], port, env, home.parent / "server.log", 300)
    yield {"base": f"http://127.0.0.1:{port}", "keys": keys, "home": home}
    process.terminate()
    process.wait(timeout=30)


def _client(server, name: str) -> httpx.Client:
    return httpx.Client(base_url=server["base"], headers={"Authorization": f"Bearer {server['keys'][name]}"},
                        timeout=300)


def _upload(client: httpx.Client, adapter: Path, version: str, owner: str = "alpha", name: str = "tiny",
            activate: bool | None = None, extra_files: list | None = None, manifest: str | None = None):
    files = [("manifest", ("card.toml", manifest or manifest_text(name, version, owner), "application/toml"))]
    files += [("files", (f"adapter/{path.name}", path.read_bytes(), "application/octet-stream"))
              for path in sorted(adapter.iterdir())]
    files += extra_files or []
    data = {} if activate is None else {"activate": str(activate).lower()}
    return client.post("/v1/cards", files=files, data=data)


def test_upload_activate_rollback_delete_with_ownership(server, tiny_adapter):
    with _client(server, "alpha") as alpha, _client(server, "beta") as beta, \
            _client(server, "viewer") as viewer, _client(server, "root") as admin:
        assert _upload(viewer, tiny_adapter, "1").status_code == 403
        foreign = _upload(alpha, tiny_adapter, "1", owner="beta")
        assert foreign.status_code == 403 and "owner = 'beta'" in foreign.json()["detail"]

        created = _upload(alpha, tiny_adapter, "1")
        assert created.status_code == 201, created.text
        body = created.json()
        assert (body["name"], body["version"], body["active"], body["registered_by"]) == ("tiny", "1", True, "alpha")
        assert body["ref"] == "card:tiny@1"
        stored = server["home"] / "cards" / "tiny" / "1" / "adapter" / "adapter_model.safetensors"
        assert stored.read_bytes() == (tiny_adapter / "adapter_model.safetensors").read_bytes()
        assert [c["name"] for c in viewer.get("/v1/cards").json()] == ["tiny"]

        taken = _upload(beta, tiny_adapter, "2", owner="beta")
        assert taken.status_code == 409 and "taken by team 'alpha'" in taken.json()["detail"]
        assert beta.post("/v1/cards/tiny/activate", json={"version": "1"}).status_code == 403
        assert beta.post("/v1/cards/tiny/rollback").status_code == 403
        assert beta.delete("/v1/cards/tiny").status_code == 403
        assert viewer.delete("/v1/cards/tiny").status_code == 403
        assert _upload(alpha, tiny_adapter, "1").status_code == 409  # versions are immutable

        second = _upload(alpha, tiny_adapter, "2", activate=False)
        assert second.status_code == 201 and second.json()["active"] is False
        assert alpha.post("/v1/cards/tiny/activate", json={"version": "2"}).json()["active"] is True
        assert alpha.post("/v1/cards/tiny/activate", json={"version": "7"}).status_code == 404
        assert alpha.post("/v1/cards/tiny/rollback").json()["version"] == "1"
        card = viewer.get("/v1/cards/tiny").json()
        assert card["owner"] == "alpha" and card["active_version"] == "1"
        assert [(v["version"], v["active"]) for v in card["versions"]] == [("1", True), ("2", False)]
        assert [c["version"] for c in viewer.get("/v1/cards", params={"all": "true"}).json()] == ["1", "2"]

        assert alpha.delete("/v1/cards/tiny", params={"version": "1"}).status_code == 409
        assert alpha.delete("/v1/cards/tiny", params={"version": "2"}).json() == {"name": "tiny", "deleted": ["2"]}
        audit = viewer.get("/v1/cards/tiny/audit").json()
        assert [(e["action"], e["actor"], e["role"]) for e in audit[:2]] == [("delete", "alpha", "team:alpha"),
                                                                             ("rollback", "alpha", "team:alpha")]
        assert audit[-1]["details"]["source"] == "upload"
        assert admin.delete("/v1/cards/tiny").json()["deleted"] == ["1"]
        assert viewer.get("/v1/cards/tiny").status_code == 404
        assert viewer.get("/v1/cards").json() == []


@pytest.mark.parametrize("filename", ["../evil.json", "/etc/evil.json", "adapter/../../evil.json", "a\\b.json",
                                      "adapter//x.json", "./x.json", "card.toml"])
def test_upload_names_that_leave_the_card_are_refused(server, tiny_adapter, filename):
    with _client(server, "alpha") as alpha:
        refused = _upload(alpha, tiny_adapter, "1", name="evil", extra_files=[("files", (filename, b"{}", "text/plain"))])
        assert refused.status_code == 422 and "files[" in refused.json()["detail"]
        assert alpha.get("/v1/cards/evil").status_code == 404
    assert not (server["home"].parent / "evil.json").exists()


def test_bad_uploads_get_clear_errors_and_change_nothing(server, tiny_adapter):
    home = server["home"]
    with _client(server, "alpha") as alpha:
        audit_before = alpha.get("/v1/cards/tiny/audit").json()
        bad_manifest = _upload(alpha, tiny_adapter, "1", manifest=manifest_text("tiny", "1", "alpha") + "oops = 1\n")
        assert bad_manifest.status_code == 422 and bad_manifest.json()["detail"].startswith("card.toml:10: model.oops")
        wrong_type = alpha.post("/v1/cards", files=[("manifest", ("card.txt", b"name = 'x'", "text/plain"))])
        assert wrong_type.status_code == 422 and "must be a .toml or .yaml file" in wrong_type.json()["detail"]
        pickled = _upload(alpha, tiny_adapter, "1", extra_files=[("files", ("adapter/weights.pt", b"\x80\x04", "x"))])
        assert pickled.status_code == 422 and pickled.json()["detail"].startswith("adapter/weights.pt: .pt files")
        clash = _upload(alpha, tiny_adapter, "1", extra_files=[("files", ("adapter/adapter_config.json", b"{}", "x"))])
        assert clash.status_code == 422 and "clashes" in clash.json()["detail"]
        huge = _upload(alpha, tiny_adapter, "1", extra_files=[("files", ("big.txt", b"x" * (5 * 1024 * 1024), "x"))])
        assert huge.status_code == 413 and "over the 4 MiB limit" in huge.json()["detail"]
        json_limit = alpha.post("/v1/cards/tiny/activate", content=b'{"version": "' + b"1" * 300_000 + b'"}',
                                headers={"content-type": "application/json"})
        assert json_limit.status_code == 413
        assert alpha.get("/v1/cards", params={"all": "true"}).json() == []  # nothing was registered
        assert alpha.get("/v1/cards/tiny/audit").json() == audit_before
    for scratch in (home / "cards" / ".uploads", home / "cards" / ".staging"):
        assert not scratch.exists() or list(scratch.iterdir()) == []
