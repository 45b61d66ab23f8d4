"""`mighty eval answers` and the answer metrics it reports.

The metric functions are checked against values worked out by hand. The command runs for real:
once against a scripted OpenAI-compatible model server started here (so every answer, and
therefore every expected figure, is known), and once with the embedded SmolLM2 model.
"""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from rag.answer_eval import (QAError, QuestionResult, contains_answer, faithfulness, load_qa, normalize, summarise,
                             token_f1)
from rag.context import Source
from rag.metrics import percentile
from tests.helpers import free_port, run_mighty


# --- metrics by hand ---------------------------------------------------------------------------

def test_normalize_follows_squad():
    assert normalize("The  Default is `k1 = 1.2`!") == "default is k1 12"
    assert normalize("An apple, a pear and THE end.") == "apple pear and end"


def test_containment_strips_markers_and_matches_whole_tokens():
    assert contains_answer("BM25 uses k1 = 1.2 by default [1].", ["1.2"])
    assert contains_answer("Names may have up to 64 characters [2][3].", ["xyz", "64 characters"])
    assert not contains_answer("There are 20 of them [2].", ["2"])  # the marker is not an answer
    assert not contains_answer("It is 640 characters long.", ["64 characters"])
    assert contains_answer("Run the ocrmypdf tool.", ["`ocrmypdf`"])


def test_token_f1_by_hand():
    # "collection names can have up to 64 characters": 8 tokens, 2 shared with the gold's 2
    assert token_f1("Collection names can have up to 64 characters [1].", ["64 characters"]) == pytest.approx(0.4)
    # best over variants: "bm25 uses k1 12 by default" vs "12" -> p=1/6, r=1 -> 2/7
    assert token_f1("BM25 uses k1 = 1.2 by default [1].", ["nothing", "1.2"]) == pytest.approx(2 / 7)
    assert token_f1("", ["1.2"]) == 0.0
    assert token_f1("1.2", ["1.2"]) == 1.0


def _keyword_encoder(texts):
    """Unit vectors on three axes chosen by keyword: cosine 1 for the same topic, 0 otherwise."""
    vectors = []
    for text in texts:
        lowered = text.lower()
        axis = 0 if "bm25" in lowered else 1 if "chunk" in lowered else 2
        vectors.append(np.eye(3)[axis])
    return np.array(vectors)


def test_faithfulness_counts_sentences_supported_by_their_cited_source():
    sources = [Source(1, "a", "A", "BM25 scores terms. It saturates.", (0, 1), 1.0),
               Source(2, "b", "B", "Chunks overlap by 32 tokens.", (0, 1), 0.5)]
    # sentence 1 cites the BM25 source and is about BM25; sentence 2 cites it too but is about chunks
    answer = "BM25 saturates repeated terms [1]. Chunks are 200 tokens long [1]."
    assert faithfulness(answer, sources, _keyword_encoder) == pytest.approx(0.5)
    # an unmarked sentence is checked against every source the answer cites
    assert faithfulness("BM25 saturates [1]. Chunk overlap is 32 [2]. Chunks overlap.", sources,
                        _keyword_encoder) == pytest.approx(1.0)
    assert faithfulness("Chunks overlap.", sources, _keyword_encoder) == 0.0  # cites nothing
    assert faithfulness("[1]", sources, _keyword_encoder) is None


def test_summary_averages_what_was_answered():
    results = [QuestionResult("a", "q", "d", ["x"], correct=True, f1=0.5, citation_correct=True, hit=True,
                              faithfulness=1.0, latency_ms=100.0, first_token_ms=10.0, generation_tokens_per_s=20.0),
               QuestionResult("b", "q", "d", ["x"], f1=0.0, hit=True, faithfulness=None, latency_ms=300.0),
               QuestionResult("c", "q", "d", ["x"], error="model failed")]
    report = summarise(results, top_k=3)
    assert report["questions"] == 3 and report["errors"] == 1
    assert report["accuracy"] == round(1 / 3, 4) and report["hit@3"] == round(2 / 3, 4)
    assert report["f1"] == round(0.5 / 3, 4) and report["faithfulness"] == 1.0
    assert report["p50_ms"] == 200.0  # over the two questions that were answered
    assert report["first_token_p50_ms"] == 10.0


def test_load_qa_names_each_bad_line(tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"id": "1", "question": "q?", "answers": ["x"], "doc": "d"}\n'
                  '{"id": "2", "question": "q?", "answers": ["x"]\n'
                  '\n'
                  '{"id": "3", "question": "q?", "answers": [], "doc": "d"}\n'
                  '["not", "an", "object"]\n'
                  '{"id": "1", "question": "again", "answers": ["b"], "doc": "d"}\n'
                  '{"id": "4", "question": "", "answers": ["b"], "doc": "d"}\n'
                  '{"id": "5", "question": "q?", "answers": ["The"], "doc": "d"}\n', encoding="utf-8")
    items, rejected = load_qa(qa)
    assert [item.id for item in items] == ["1"]
    assert rejected == [f"{qa}:2: malformed JSON (Expecting ',' delimiter at column 47)",
                        f"{qa}:4: 'answers' must be a non-empty list of non-empty strings",
                        f"{qa}:5: each line must be a JSON object",
                        f"{qa}:6: duplicate id '1'",
                        f"{qa}:7: 'question' must be a non-empty string",
                        f"{qa}:8: gold answer 'The' is empty once punctuation and articles are removed"]
    with pytest.raises(QAError, match="no such file"):
        load_qa(tmp_path / "missing.jsonl")


def test_shipped_qa_set_is_well_formed_and_grounded():
    """Every gold answer is copied from the document the question names, with ids as `index add` gives them."""
    repo = Path(__file__).resolve().parents[1]
    items, rejected = load_qa(repo / "data" / "qa" / "docs-qa.jsonl")
    assert not rejected and len(items) >= 40
    docs = {f"docs/{path.name}": path.read_text(encoding="utf-8") for path in (repo / "data" / "docs").glob("*.md")}
    for item in items:
        assert item.doc in docs, item.id
        assert all(answer in docs[item.doc] for answer in item.answers), item.id
    assert len({item.doc for item in items}) >= 0.8 * len(docs)


# --- the command, against a scripted model --------------------------------------------------------

SCRIPT = {  # question -> (answer, title of the source to cite)
    "What value of k1 does BM25 use by default?": ("BM25 uses k1 = 1.2 by default", "BM25 Scoring"),
    "How long can a collection name be?": ("Collection names can have up to 64 characters", "Concepts: Collections"),
    "Which tool should I run on a scanned PDF before indexing it?": ("I do not know.", None),
}
_SOURCE = re.compile(r'<source id="(\d+)" title="([^"]*)"')


class ScriptedModel(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint answering from SCRIPT, streamed in two pieces."""

    requests: list[dict] = []

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).requests.append(body)
        prompt = body["messages"][-1]["content"]
        question = next((q for q in SCRIPT if f"Question: {q}" in prompt), None)
        text, title = SCRIPT[question] if question else ("ok", None)
        numbers = [n for n, t in _SOURCE.findall(prompt) if t == title]
        if numbers:
            text += f" [{numbers[0]}]."
        usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": 7,
                 "total_tokens": len(prompt) // 4 + 7}
        if not body.get("stream"):
            self._send("application/json", json.dumps({
                "id": "x", "object": "chat.completion", "created": 0, "model": body["model"], "usage": usage,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}]}))
            return
        middle = len(text) // 2
        chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": piece}, "finish_reason": None}]}
                  for piece in (text[:middle], text[middle:])]
        chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        chunks.append({"choices": [], "usage": usage})
        events = "".join(f"data: {json.dumps({'id': 'x', 'object': 'chat.completion.chunk', 'created': 0, 'model': body['model'], **c})}\n\n"
                         for c in chunks)
        self._send("text/event-stream", events + "data: [DONE]\n\n")

    def _send(self, kind: str, payload: str) -> None:
        data = payload.encode()
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def scripted_model():
    ScriptedModel.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), ScriptedModel)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _qa_lines(extra: str = "") -> str:
    golds = {"What value of k1 does BM25 use by default?": (["1.2"], "docs/bm25-scoring.md"),
             "How long can a collection name be?": (["64 characters"], "docs/concepts-collections.md"),
             "Which tool should I run on a scanned PDF before indexing it?": (["ocrmypdf"], "docs/troubleshooting.md")}
    return "".join(json.dumps({"id": f"t{i}", "question": q, "answers": a, "doc": d}) + "\n"
                   for i, (q, (a, d)) in enumerate(golds.items(), start=1)) + extra


def test_eval_answers_scores_known_answers(writable_demo_home, tmp_path, scripted_model):
    qa = tmp_path / "qa.jsonl"
    qa.write_text(_qa_lines('{"id": "bad", "question": "q?"\n{"id": "t9", "question": "q?", "answers": "x", "doc": "d"}\n'))
    out = tmp_path / "answers.jsonl"
    result = run_mighty(writable_demo_home, "eval", "answers", str(qa), "--collection", "demo", "--llm", "openai/scripted",
                        "--api-base", scripted_model, "--api-key", "unused", "--top-k", "3", "--cards", "none",
                        "--out", str(out), "--json")
    assert result.returncode == 1, result.stderr  # two lines rejected, the rest evaluated
    assert f"{qa}:4: malformed JSON" in result.stderr
    assert f"{qa}:5: 'answers' must be a non-empty list of non-empty strings" in result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    rows = {row["id"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert list(rows) == ["t1", "t2", "t3"]

    assert rows["t1"]["answer"].startswith("BM25 uses k1 = 1.2 by default [")
    assert rows["t1"]["correct"] and rows["t1"]["citation_correct"] and rows["t1"]["hit"]
    assert rows["t1"]["f1"] == pytest.approx(round(2 / 7, 4))
    assert rows["t2"]["correct"] and rows["t2"]["citation_correct"] and rows["t2"]["f1"] == pytest.approx(0.4)
    assert rows["t3"]["answer"] == "I do not know." and not rows["t3"]["correct"] and rows["t3"]["f1"] == 0.0
    assert not rows["t3"]["citation_correct"] and rows["t3"]["faithfulness"] == 0.0
    assert rows["t2"]["cited_docs"] == ["docs/concepts-collections.md"]

    # the report is computed from these answers, and the token counts are the ones the model reported
    answered = [r for r in ScriptedModel.requests if r.get("stream")]
    assert [row["prompt_tokens"] for row in rows.values()] == [len(r["messages"][-1]["content"]) // 4 for r in answered]
    assert all(row["completion_tokens"] == 7 and row["first_token_ms"] > 0 for row in rows.values())
    assert report["questions"] == 3 and report["errors"] == 0 and report["model"] == "openai/scripted"
    assert report["accuracy"] == round(2 / 3, 4) and report["citation_accuracy"] == round(2 / 3, 4)
    assert report["hit@3"] == round(sum(row["hit"] for row in rows.values()) / 3, 4)
    assert report["p50_ms"] == round(percentile([row["latency_ms"] for row in rows.values()], 50), 1)
    # one fixed system prompt first in every request, so a local runtime can reuse its KV cache
    assert len({r["messages"][0]["content"] for r in ScriptedModel.requests}) == 1
    assert all(r["messages"][0]["role"] == "system" for r in ScriptedModel.requests)


def test_eval_answers_refuses_unusable_input(writable_demo_home, tmp_path):
    missing = run_mighty(writable_demo_home, "eval", "answers", str(tmp_path / "none.jsonl"), "--collection", "demo")
    assert missing.returncode == 2 and "none.jsonl: no such file" in missing.stderr
    qa = tmp_path / "qa.jsonl"
    qa.write_text(_qa_lines())
    unknown = run_mighty(writable_demo_home, "eval", "answers", str(qa), "--collection", "nope")
    assert unknown.returncode == 2 and "nope" in unknown.stderr and "Traceback" not in unknown.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("not json\n")
    refused = run_mighty(writable_demo_home, "eval", "answers", str(empty), "--collection", "demo")
    assert refused.returncode == 1 and f"{empty}:1: malformed JSON" in refused.stderr


# --- the command with the embedded model ---------------------------------------------------------

def test_eval_answers_with_the_embedded_model(writable_demo_home, tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(_qa_lines().splitlines(keepends=True)[:2]))
    out = tmp_path / "answers.jsonl"
    result = run_mighty(writable_demo_home, "eval", "answers", str(qa), "--collection", "demo",
                        "--llm", "local/smollm2-135m-instruct", "--max-tokens", "48", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert report["questions"] == len(rows) == 2 and report["errors"] == 0
    for row in rows:
        assert row["answer"].strip() and 0 < row["completion_tokens"] <= 48 and row["prompt_tokens"] > 100
        assert row["correct"] == contains_answer(row["answer"], row["golds"])
        assert row["hit"] == (row["doc"] in row["retrieved_docs"])
        assert row["generation_tokens_per_s"] is None or row["generation_tokens_per_s"] > 0
    assert report["accuracy"] == round(sum(row["correct"] for row in rows) / 2, 4)
    assert report["citation_accuracy"] == round(sum(row["citation_correct"] for row in rows) / 2, 4)
    assert set(report) >= {"f1", "hit@5", "faithfulness", "p50_ms", "p95_ms", "first_token_p50_ms",
                           "prompt_tokens_per_s", "generation_tokens_per_s"}
