"""Issue 9 regressions in the readers: one bad document never stops a run, and every one is named."""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from indexes.documents import Rejection, Skipped, SourceDocument, format_size
from indexes.readers import read_file, read_paths
from tests.adversarial.cases_ingest import DEEP, GOOD, LOCKED_PDF, OPEN_AES_PDF, SURROGATE, _pdf
from tests.helpers import run_mighty

LIMIT = 10 * 1024 * 1024


def _split(results) -> tuple[dict[str, SourceDocument], dict[tuple[str, int | None], str], list[Skipped]]:
    results = list(results)
    docs = {r.id: r for r in results if isinstance(r, SourceDocument)}
    rejected = {(Path(r.source).name, r.line): r.reason for r in results
                if isinstance(r, Rejection) and not isinstance(r, Skipped)}
    return docs, rejected, [r for r in results if isinstance(r, Skipped)]


def _jsonl(path: Path, *lines: bytes) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def test_deep_nesting_and_lone_surrogates_are_rejected_by_line(tmp_path):
    good = json.dumps(GOOD).encode()
    meta = b'{"_id": "m", "text": "fine", "metadata": {"k": "\\udc00"}}'
    path = _jsonl(tmp_path / "x.jsonl", DEEP, SURROGATE, good, meta)
    docs, rejected, _ = _split(read_paths([str(path)], LIMIT))
    assert set(docs) == {"adv-good"}
    assert rejected[("x.jsonl", 1)] == "malformed JSON: nested too deeply"
    assert "'text' is not valid Unicode (lone surrogate '\\ud800')" in rejected[("x.jsonl", 2)]
    assert "'metadata' is not valid Unicode" in rejected[("x.jsonl", 4)]


def test_invalid_utf8_on_stdin_costs_one_line(tmp_path):
    stdin = io.BytesIO(b'{"_id": "a", "text": "one"}\n{"_id": "b", "text": "caf\xe9"}\n{"_id": "c", "text": "three"}\n')
    docs, rejected, _ = _split(read_paths(["-"], LIMIT, stdin=stdin))
    assert set(docs) == {"a", "c"}
    assert "invalid UTF-8" in rejected[("<stdin>", 2)]


def test_crlf_lines_are_numbered_and_json_messages_read_well(tmp_path):
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b'{"_id": "a", "text": "ok"}\r\n{"_id": "b", "text": "caf\xe9"}\r\n{"_id": "c", "text": "open')
    docs, rejected, _ = _split(read_paths([str(path)], LIMIT))
    assert set(docs) == {"a"}
    assert "invalid UTF-8" in rejected[("crlf.jsonl", 2)]
    assert rejected[("crlf.jsonl", 3)] == "malformed JSON: Unterminated string starting at column 22"


def test_duplicate_ids_keep_the_first_and_say_where(tmp_path):
    first = _jsonl(tmp_path / "a.jsonl", b'{"_id": "x", "text": "one"}', b'{"_id": "x", "text": "two"}')
    second = _jsonl(tmp_path / "b.jsonl", b'{"_id": "x", "text": "three"}')
    results = list(read_paths([str(first), str(second)], LIMIT))
    docs, rejected, _ = _split(results)
    assert docs["x"].text == "one"
    assert rejected[("a.jsonl", 2)] == "duplicate _id 'x' (first at line 1); the first is kept"
    assert rejected[("b.jsonl", 1)] == f"duplicate _id 'x' (first at {first}:1); the first is kept"


def test_encrypted_pdfs_open_or_are_rejected_with_the_reason(tmp_path):
    (tmp_path / "locked.pdf").write_bytes(LOCKED_PDF)
    (tmp_path / "open.pdf").write_bytes(OPEN_AES_PDF)
    docs, rejected, _ = _split(read_paths([str(tmp_path / "locked.pdf"), str(tmp_path / "open.pdf")], LIMIT))
    assert "volcanoes vent sulphur" in docs["open.pdf"].text
    assert "protected by a password" in rejected[("locked.pdf", None)]


def test_pdf_warnings_go_to_logging_not_stderr(tmp_path, capfd, caplog):
    data = _pdf("Basalt cools into columns.")
    broken = data.replace(b"startxref\n" + data.rsplit(b"startxref\n", 1)[1].split(b"\n")[0],
                          b"startxref\n" + b"9")  # a wrong xref offset: pypdf warns and recovers
    (tmp_path / "b.pdf").write_bytes(broken)
    with caplog.at_level(logging.INFO, logger="indexes.readers"):
        docs, _, _ = _split(read_paths([str(tmp_path / "b.pdf")], LIMIT))
    assert "Basalt cools" in docs["b.pdf"].text
    assert "startxref" in caplog.text and "b.pdf" in caplog.text
    assert "startxref" not in capfd.readouterr().err


def test_symlinks_leaving_the_folder_are_reported_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("SECRETMARKER")
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "good.md").write_text("# Good\n\nFine.\n")
    (folder / "x.txt").symlink_to(outside / "secret.txt")
    (folder / "away").symlink_to(outside)
    (folder / "sub" / "alias.md").symlink_to(folder / "good.md")  # stays inside: read under its own id
    docs, rejected, _ = _split(read_paths([str(folder)], LIMIT))
    assert set(docs) == {"docs/good.md", "docs/sub/alias.md"}
    assert all("SECRETMARKER" not in d.text for d in docs.values())
    assert "leading outside the folder" in rejected[("x.txt", None)]
    assert "leading outside the folder" in rejected[("away", None)]


def test_unsupported_files_are_skipped_in_folders_but_errors_when_named(tmp_path):
    (tmp_path / "data" / "cards").mkdir(parents=True)
    (tmp_path / "data" / "cards" / "x.toml").write_text("name = 'x'\n")
    (tmp_path / "data" / "a.md").write_text("# A\n\nAardvarks dig.\n")
    docs, rejected, skipped = _split(read_paths([str(tmp_path / "data")], LIMIT))
    assert set(docs) == {"data/a.md"} and not rejected and [Path(s.source).name for s in skipped] == ["x.toml"]
    (named,) = list(read_file(tmp_path / "data" / "cards" / "x.toml", "x.toml", LIMIT))
    assert type(named) is Rejection and "unsupported file type '.toml'" in named.reason


def test_any_failure_inside_one_file_is_that_files_rejection(tmp_path, monkeypatch):
    import indexes.readers as readers

    def explode(*_, **__):
        raise RuntimeError("parser bug")

    monkeypatch.setattr(readers, "_html_to_text", explode)
    (tmp_path / "a.html").write_text("<p>x</p>")
    (tmp_path / "b.md").write_text("# B\n\nfine\n")
    docs, rejected, _ = _split(read_paths([str(tmp_path)], LIMIT))
    assert set(docs) == {f"{tmp_path.name}/b.md"}
    assert rejected[("a.html", None)] == "could not be read (RuntimeError: parser bug)"


def test_sizes_are_binary_units():
    assert [format_size(n) for n in (10 * 1024 * 1024, 11_010_048, 1536, 12)] == ["10 MiB", "10.5 MiB", "1.5 KiB",
                                                                                  "12 bytes"]


def test_cli_folder_summary_counts_skipped_files_and_exits_0(tmp_path):
    (tmp_path / "data" / "cards").mkdir(parents=True)
    (tmp_path / "data" / "cards" / "x.toml").write_text("name = 'x'\n")
    (tmp_path / "data" / "a.md").write_text("# A\n\nAardvarks dig burrows with strong claws.\n")
    walked = run_mighty(tmp_path / "home", "index", "add", str(tmp_path / "data"), "--collection", "zoo")
    assert walked.returncode == 0, walked.stderr
    assert "1 added" in walked.stdout and "1 skipped" in walked.stdout
    named = run_mighty(tmp_path / "home", "index", "add", str(tmp_path / "data" / "cards" / "x.toml"),
                       "--collection", "zoo")
    assert named.returncode == 1 and "unsupported file type '.toml'" in named.stderr
