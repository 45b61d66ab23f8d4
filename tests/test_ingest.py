"""Ingest: every kind of bad input is named and skipped, and nothing stored is lost."""
from __future__ import annotations

import json
from pathlib import Path

from indexes.collection import Home
from indexes.documents import Rejection, Skipped, SourceDocument
from indexes.readers import read_paths
from tests.helpers import run_mighty


def _write_bad_inputs(folder: Path) -> None:
    folder.mkdir()
    (folder / "good.md").write_text("# Good\n\nPenguins huddle together to survive antarctic winters.\n")
    (folder / "latin1.txt").write_bytes("line one\ncaf\xe9 au lait\n".encode("latin-1"))
    (folder / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (folder / "empty.md").write_text("")
    (folder / "data.xyz").write_text("unknown extension")
    lines = [json.dumps({"_id": "j1", "title": "Otters", "text": "Sea otters hold hands while sleeping."}),
             "{not json",
             json.dumps({"_id": "j3", "text": ""}),
             json.dumps({"title": "no id", "text": "text without an id"}),
             json.dumps({"_id": "j5", "text": "Octopuses have three hearts.", "metadata": {"lang": "en"}})]
    (folder / "batch.jsonl").write_text("\n".join(lines) + "\n")


def test_readers_name_file_and_line(tmp_path):
    _write_bad_inputs(tmp_path / "in")
    results = list(read_paths([str(tmp_path / "in")], max_bytes=10_000_000))
    docs = {r.id for r in results if isinstance(r, SourceDocument)}
    rejected = {(Path(r.source).name, r.line): r.reason for r in results if isinstance(r, Rejection)}
    assert docs == {"in/good.md", "j1", "j5"}
    assert "invalid UTF-8" in rejected[("latin1.txt", 2)]
    assert "binary" in rejected[("image.txt", None)]
    assert "empty" in rejected[("empty.md", None)]
    skipped = [r for r in results if isinstance(r, Skipped)]  # met in a folder: skipped, not an error
    assert [(Path(r.source).name, r.reason.split(";")[0]) for r in skipped] == [
        ("data.xyz", "unsupported file type '.xyz'")]
    assert "malformed JSON" in rejected[("batch.jsonl", 2)]
    assert "no 'text'" in rejected[("batch.jsonl", 3)]
    assert "missing document id" in rejected[("batch.jsonl", 4)]


def test_oversized_document_is_rejected(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("word " * 2_200_000)  # 11 MB
    (result,) = list(read_paths([str(big)], max_bytes=10 * 1024 * 1024))
    assert isinstance(result, Rejection) and "is 10.5 MiB, over the 10 MiB document limit" in result.reason


def test_html_and_pdf_text_is_extracted(tmp_path):
    (tmp_path / "page.html").write_text("<html><head><title>Tides</title><script>var x=1;</script></head>"
                                        "<body><h1>Tides</h1><p>The moon drives ocean tides.</p></body></html>")
    from reportlab.pdfgen import canvas

    pdf = canvas.Canvas(str(tmp_path / "paper.pdf"))
    pdf.drawString(72, 720, "Glaciers carve valleys over millennia.")
    pdf.save()
    docs = {d.id: d for d in read_paths([str(tmp_path)], 10_000_000)}
    html = docs[f"{tmp_path.name}/page.html"]
    assert html.title == "Tides" and "moon drives ocean tides" in html.text and "var x" not in html.text
    assert "Glaciers carve valleys" in docs[f"{tmp_path.name}/paper.pdf"].text


def test_cli_rejects_bad_input_keeps_the_rest_and_stored_data(tmp_path):
    home = tmp_path / "home"
    first = run_mighty(home, "index", "add", "-", "--collection", "zoo",
                       stdin=json.dumps({"_id": "kept", "text": "Giraffes sleep only a few minutes a day."}) + "\n")
    assert first.returncode == 0, first.stderr
    _write_bad_inputs(tmp_path / "in")
    second = run_mighty(home, "index", "add", str(tmp_path / "in"), "--collection", "zoo")
    assert second.returncode == 1
    for expected in ("latin1.txt:2", "image.txt", "empty.md", "batch.jsonl:2", "batch.jsonl:4"):
        assert expected in second.stderr, expected
    assert "data.xyz" not in second.stderr  # a folder's unsupported file is skipped and counted
    assert "6 rejected, 1 skipped" in second.stdout and "3 added" in second.stdout
    snapshot = Home(home).open("zoo").snapshot()
    assert snapshot.manifest.documents == 4  # 'kept' survived next to the three good new ones
    found = run_mighty(home, "search", "giraffes sleep", "--collection", "zoo", "--json", "--mode", "bm25")
    assert json.loads(found.stdout)["hits"][0]["id"] == "kept"


def test_cli_unknown_collection_and_bad_options_fail_clearly(tmp_path):
    home = tmp_path / "home"
    result = run_mighty(home, "search", "anything", "--collection", "nope")
    assert result.returncode == 2 and "unknown collection 'nope'" in result.stderr
    result = run_mighty(home, "index", "delete", "x", "--collection", "nope")
    assert result.returncode == 2 and "mighty index add" in result.stderr
    result = run_mighty(home, "index", "add", "-", "--collection", "bad name!", stdin="")
    assert result.returncode == 2 and "invalid collection name" in result.stderr
    result = run_mighty(home, "index", "add", "-", "--collection", "c", "--chunk-size", "32", "--chunk-overlap", "40",
                        stdin="")
    assert result.returncode == 2 and "overlap" in result.stderr
