"""Bad input to ingest and the request boundary (issue 9, items 4, 6, 8, 9 and 10), as data."""
from __future__ import annotations

import io
import json

from tests.adversarial import CliCase, RestCase

MiB = 1 << 20


def _jsonl(*records: object) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def _pdf(text: str, user_password: str | None = None) -> bytes:
    """A one-page PDF; with `user_password`, AES-256 encrypted ('' = opens without a password)."""
    from pypdf import PdfReader, PdfWriter
    from reportlab.pdfgen import canvas

    plain = io.BytesIO()
    page = canvas.Canvas(plain)
    page.drawString(72, 720, text)
    page.save()
    if user_password is None:
        return plain.getvalue()
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(plain.getvalue())))
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm="AES-256")
    encrypted = io.BytesIO()
    writer.write(encrypted)
    return encrypted.getvalue()


GOOD = {"_id": "adv-good", "text": "Penguins huddle together to survive antarctic winters."}
DEEP = b'{"_id": "deep", "text": "x", "metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
SURROGATE = b'{"_id": "s", "text": "\\ud800"}'
BAD_UTF8 = b'{"_id": "u", "text": "caf\xe9"}'
LOCKED_PDF = _pdf("Locked away.", user_password="hunter2")
OPEN_AES_PDF = _pdf("Encrypted but openable: volcanoes vent sulphur.", user_password="")
MULTIPART_21_MIB = (b'--zzz\r\nContent-Disposition: form-data; name="files"; filename="big.md"\r\n'
                    b"Content-Type: text/markdown\r\n\r\n" + b"x" * (21 * MiB) + b"\r\n--zzz--\r\n")
DOCS = "/v1/collections/{collection}/documents"
FILES = "/v1/collections/{collection}/files"
ADD = ("index", "add", "--collection", "{collection}")

REST_CASES = [
    # item 4: one bad file or line never fails the upload or its job, and is named with its line
    RestCase("files-nested-jsonl-next-to-good", "POST", FILES,
             files=(("files", "deep.jsonl", _jsonl(GOOD, DEEP)),), expect=(202,),
             job_must_contain=("nested too deeply",)),
    RestCase("files-lone-surrogate-jsonl", "POST", FILES, files=(("files", "s.jsonl", SURROGATE + b"\n"),),
             expect=(422,), must_contain=("not valid Unicode",)),
    RestCase("files-invalid-utf8-jsonl", "POST", FILES, files=(("files", "u.jsonl", BAD_UTF8 + b"\n"),),
             expect=(422,), must_contain=("invalid UTF-8",)),
    RestCase("files-password-pdf", "POST", FILES, files=(("files", "locked.pdf", LOCKED_PDF),),
             expect=(422,), must_contain=("password",)),
    RestCase("files-crlf-jsonl-names-line", "POST", FILES,
             files=(("files", "crlf.jsonl", b'{"_id": "adv-crlf", "text": "ok"}\r\n{"_id": "x", "text": "caf\xe9"}\r\n'),),
             expect=(202,), job_must_contain=("invalid UTF-8",)),
    RestCase("files-unsupported-type-named", "POST", FILES, files=(("files", "card.toml", b"name = 'x'\n"),),
             expect=(422,), must_contain=("unsupported file type",)),
    # item 6: upload names are base names; names that are not names are refused; folders always cleaned up
    RestCase("files-named-dotdot", "POST", FILES, files=(("files", "..", b"hello"),), expect=(422,)),
    RestCase("files-named-dot", "POST", FILES, files=(("files", ".", b"hello"),), expect=(422,)),
    RestCase("files-named-traversal", "POST", FILES, breach=True, expect=(202,),
             files=(("files", "../../../../tmp/adv-escape.md", b"# Escape\n\nWalruses use tusks to climb ice.\n"),),
             job_must_contain=('"added": 1',)),
    RestCase("files-named-backslash-traversal", "POST", FILES, breach=True, expect=(202,),
             files=(("files", "..\\..\\adv-win.md", b"# Win\n\nNarwhal tusks are teeth.\n"),)),
    # item 6: a lone surrogate anywhere in a JSON body is a 422, never a 500 from the error echo
    RestCase("json-lone-surrogate-query", "POST", "/v1/retrieve",
             content=b'{"query": "\\ud800", "collection": "{collection}"}',
             headers={"content-type": "application/json"}, expect=(422,), must_contain=("lone surrogate",)),
    RestCase("json-lone-surrogate-raw-bytes", "POST", "/v1/retrieve",
             content=b'{"query": "\xed\xa0\x80", "collection": "{collection}"}',
             headers={"content-type": "application/json"}, expect=(422,), must_contain=("lone surrogate",)),
    RestCase("json-lone-surrogate-in-invalid-body", "POST", "/v1/retrieve", content=b'{"bogus": "\\udfff"}',
             headers={"content-type": "application/json"}, expect=(422,)),
    RestCase("json-lone-surrogate-document", "POST", DOCS, content=b'{"documents": [' + SURROGATE + b"]}",
             headers={"content-type": "application/json"}, expect=(422,)),
    RestCase("json-surrogate-pair-is-fine", "POST", "/v1/retrieve",
             content=b'{"query": "otters \\ud83e\\udda6", "collection": "{collection}", "mode": "bm25"}',
             headers={"content-type": "application/json"}, expect=(200,)),
    RestCase("json-nested-too-deep", "POST", "/v1/retrieve", content=b"[" * 100_000 + b"]" * 100_000,
             headers={"content-type": "application/json"}),
    RestCase("json-invalid-utf8", "POST", "/v1/retrieve", content=b'{"query": "caf\xe9", "collection": "{collection}"}',
             headers={"content-type": "application/json"}),
    # item 6: an unknown LiteLLM provider is the client's error, naming the model
    RestCase("query-unknown-llm-provider", "POST", "/v1/query",
             json={"query": "otters", "collection": "{collection}", "llm": "nonexistent-provider/x"},
             expect=(422,), must_contain=("nonexistent-provider/x",)),
    RestCase("query-unknown-llm-fallback", "POST", "/v1/query",
             json={"query": "otters", "collection": "{collection}", "llm": "local/smollm2-135m-instruct",
                   "fallbacks": ["nonexistent-provider/y"]}, expect=(422,), must_contain=("nonexistent-provider/y",)),
    RestCase("chat-unknown-llm-provider", "POST", "/v1/chat/completions",
             json={"model": "nonexistent-provider/x", "messages": [{"role": "user", "content": "hi"}]},
             expect=(422,), must_contain=("nonexistent-provider/x",)),
    # item 8: one document limit on every path; bodies over the limit are 413 however they are sent
    RestCase("documents-over-document-limit", "POST", DOCS,
             json={"documents": [{"_id": "adv-big", "text": "word " * (2 * MiB + MiB // 5)}]},
             expect=(422,), must_contain=("over the 10 MiB document limit",)),
    RestCase("body-over-limit-chunked", "POST", DOCS, content=b"x" * (21 * MiB), chunked=True,
             headers={"content-type": "application/json"}, expect=(413,), must_contain=("20 MiB",)),
    RestCase("body-over-limit-declared", "POST", DOCS, content=b"x" * (21 * MiB),
             headers={"content-type": "application/json"}, expect=(413,)),
    RestCase("upload-over-limit-chunked", "POST", FILES, content=MULTIPART_21_MIB, chunked=True,
             headers={"content-type": "multipart/form-data; boundary=zzz"}, expect=(413,)),
    # item 9: the CLI's document rules over REST; repeated names and ids are reported, never overwritten
    RestCase("documents-whitespace-text", "POST", DOCS, json={"documents": [{"_id": "adv-ws", "text": " \n\t "}]},
             expect=(422,), must_contain=("no 'text'",)),
    RestCase("documents-whitespace-id", "POST", DOCS, json={"documents": [{"_id": "   ", "text": "hello"}]},
             expect=(422,), must_contain=("missing document id",)),
    RestCase("documents-duplicate-id", "POST", DOCS,
             json={"documents": [{"_id": "adv-dup", "text": "one"}, {"_id": "adv-dup", "text": "two"}]},
             expect=(422,), must_contain=("duplicate _id 'adv-dup' (first at documents[0])",)),
    RestCase("files-same-name-twice", "POST", FILES,
             files=(("files", "a.md", b"# A\n\nfirst\n"), ("files", "a.md", b"# A\n\nsecond\n")),
             expect=(422,), must_contain=("two uploaded files are named 'a.md'",)),
    RestCase("files-duplicate-id-in-jsonl", "POST", FILES, expect=(202,),
             files=(("files", "d.jsonl", _jsonl({"_id": "adv-d", "text": "one"}, {"_id": "adv-d", "text": "two"})),),
             job_must_contain=("duplicate _id 'adv-d' (first at line 1)",)),
    RestCase("delete-id-with-newline-by-query", "DELETE", DOCS + "?id=adv%0Anot-there", expect=(404,),
             must_contain=("'adv\\nnot-there'",)),
    RestCase("job-unknown-id", "GET", "/v1/jobs/../../etc/passwd", expect=(404,)),
    RestCase("files-reader-key", "POST", FILES, role="reader", files=(("files", "r.md", b"# R\n\nreader\n"),),
             expect=(403,)),
]

CLI_CASES = [
    # item 4: every per-document failure is named file:line and the rest is indexed
    CliCase("cli-nested-jsonl", (*ADD, "{tmp}/deep.jsonl"), files={"deep.jsonl": _jsonl(GOOD, DEEP)},
            must_contain=("deep.jsonl:2", "nested too deeply", "1 added"), names_location=True),
    CliCase("cli-lone-surrogate", (*ADD, "{tmp}/s.jsonl"), files={"s.jsonl": _jsonl(SURROGATE, GOOD)},
            must_contain=("s.jsonl:1", "not valid Unicode", "1 added"), names_location=True),
    CliCase("cli-stdin-invalid-utf8", (*ADD, "-"), stdin=_jsonl(GOOD, BAD_UTF8, {"_id": "adv-3", "text": "three"}),
            must_contain=("<stdin>:2", "invalid UTF-8", "2 added"), names_location=True),
    CliCase("cli-password-pdf", (*ADD, "{tmp}/docs"),
            files={"docs/locked.pdf": LOCKED_PDF, "docs/good.md": b"# Good\n\nOk.\n"},
            must_contain=("locked.pdf", "password", "1 added")),
    CliCase("cli-aes-pdf-without-user-password", (*ADD, "{tmp}/open.pdf"), files={"open.pdf": OPEN_AES_PDF},
            expect_exit=(0,), must_contain=("1 added",)),
    CliCase("cli-symlink-out-of-folder", (*ADD, "{tmp}/docs"), files={"docs/good.md": b"# Good\n\nOk.\n"},
            symlinks={"docs/x.txt": "/etc/hostname", "docs/away": "{other_home}"}, breach=True,
            must_contain=("x.txt: symbolic link leading outside the folder", "1 added"),
            must_not_contain=("Traceback (most recent call last)", "SECRETMARKER")),
    # item 9: duplicate ids, CRLF lines, JSON messages, sizes in MiB, markup in reported text
    CliCase("cli-duplicate-id", (*ADD, "{tmp}/d.jsonl"),
            files={"d.jsonl": _jsonl({"_id": "adv-x", "text": "one"}, GOOD, {"_id": "adv-x", "text": "two"})},
            must_contain=("d.jsonl:3: duplicate _id 'adv-x' (first at line 1); the first is kept", "2 added"),
            names_location=True),
    CliCase("cli-crlf-invalid-utf8-line", (*ADD, "{tmp}/crlf.jsonl"),
            files={"crlf.jsonl": b'{"_id": "adv-c", "text": "ok"}\r\n' + BAD_UTF8 + b"\r\n"},
            must_contain=("crlf.jsonl:2", "1 added"), names_location=True),
    CliCase("cli-unterminated-string", (*ADD, "{tmp}/t.jsonl"), files={"t.jsonl": b'{"_id": "t", "text": "open'},
            must_contain=("t.jsonl:1", "Unterminated string starting at column"), names_location=True,
            must_not_contain=("at at", "Traceback (most recent call last)")),
    CliCase("cli-oversized-file", (*ADD, "{tmp}/big.txt"), files={"big.txt": b"word " * (2 * MiB + MiB // 5)},
            must_contain=("big.txt", "is 11 MiB, over the 10 MiB document limit"),
            must_not_contain=(" MB", "Traceback (most recent call last)")),
    CliCase("cli-markup-in-reported-id", (*ADD, "{tmp}/m.jsonl"), files={"m.jsonl": _jsonl({"_id": "[/red]", "text": " "})},
            must_contain=("m.jsonl:1", "[/red]")),
    # item 10: a folder's unsupported files are skipped and counted; a named one is still an error
    CliCase("cli-folder-skips-unsupported", (*ADD, "{tmp}/data"),
            files={"data/docs/a.md": b"# A\n\nAardvarks dig.\n", "data/cards/x.toml": b"name = 'x'\n"},
            expect_exit=(0,), must_contain=("1 added", "1 skipped")),
    CliCase("cli-named-unsupported-file", (*ADD, "{tmp}/x.toml"), files={"x.toml": b"name = 'x'\n"},
            must_contain=("x.toml", "unsupported file type '.toml'")),
]
