"""Cascades: the string grammar, the offline curve and fit, the JSON router, faithfulness scoring with
the real embedder, and the CLI (`mighty eval answers --llm cascade:...`, `mighty cascade fit|train-router`)."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from rag import cascade_curve, cascade_router, llm
from rag.cascade import faithfulness_confidence
from rag.cascade_spec import CascadeSpec, CascadeSpecError, parse
from rag.context import Source
from tests.cascade_helpers import LARGE, SMALL, cascade, record, router_records, twin_env, write_records
from tests.helpers import run_mighty


# --- the string ---------------------------------------------------------------------------------

def test_parse_reads_every_part_and_round_trips():
    spec = parse("cascade:local/qwen2.5-coder-0.5b-instruct>openai/gpt-4o-mini?policy=faithfulness&threshold=0.7")
    assert spec == CascadeSpec("local/qwen2.5-coder-0.5b-instruct", "openai/gpt-4o-mini", "faithfulness", 0.7, 3)
    assert parse(spec.model_string()) == spec
    assert parse(f"cascade:{SMALL}>{LARGE}") == CascadeSpec(SMALL, LARGE, "verify", 0.5, 3)
    assert spec.with_threshold(0.25).threshold == 0.25


@pytest.mark.parametrize("text, reason", [
    ("cascade:local/a", "exactly two models"),
    ("cascade:local/a>local/b>local/c", "exactly two models"),
    ("cascade:local/a>", "exactly two models"),
    ("cascade:local/a>local/a", "same model on both sides"),
    ("cascade:local/a>local/b?policy=vote", "unknown cascade policy 'vote'"),
    ("cascade:local/a>local/b?threshold=1.5", "between 0 and 1"),
    ("cascade:local/a>local/b?threshold=nan", "finite"),
    ("cascade:local/a>local/b?threshold=high", "must be a number"),
    ("cascade:local/a>local/b?k=0", "from 1 to 8"),
    ("cascade:local/a>local/b?treshold=0.9", "unknown cascade option(s) treshold"),
    ("cascade:local/a>local/b?policy=verify&policy=router", "given twice"),
    ("cascade:cascade:local/a>local/b", "cannot contain another cascade"),
])
def test_bad_cascade_strings_say_what_is_wrong(text, reason):
    with pytest.raises(CascadeSpecError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse(text)
    with pytest.raises(llm.LLMModelError):  # the one boundary every model string passes
        llm.check_model(text)


def test_check_model_checks_both_sides_like_any_model():
    llm.check_model(cascade("verify", 0.5))
    with pytest.raises(llm.LLMModelError, match="nonsense-model"):
        llm.check_model(f"cascade:{SMALL}>nonsense-model")


# --- the curve and fit, from records written by hand ---------------------------------------------

def _records():
    # small right on q0, q1; large right on all but q3; confidences decide who answers
    rows = [record("a", True, True, {"verify": 1.0}, overhead={"verify": 100}, index=0),
            record("b", True, True, {"verify": 0.6}, overhead={"verify": 100}, index=1),
            record("c", False, True, {"verify": 0.3}, overhead={"verify": 100}, index=2),
            record("d", False, False, {"verify": 0.0}, overhead={"verify": 100}, index=3)]
    return [cascade_curve.CascadeRecord.from_dict(r) for r in rows]


def test_curve_points_worked_out_by_hand():
    records = _records()
    small, large = cascade_curve.baselines(records)
    assert (small.accuracy, small.escalated, small.mean_latency_ms) == (0.5, 0.0, 1000.0)
    assert (large.accuracy, large.escalated, large.mean_latency_ms, large.large_tokens) == (0.75, 1.0, 4000.0, 120.0)
    # threshold 0.5 escalates c and d: right on a, b (small) and c (large) -> 3/4
    point = cascade_curve.at(records, "verify", 0.5)
    assert (point.accuracy, point.escalated, point.relative_accuracy) == (0.75, 0.5, 1.0)
    assert point.mean_latency_ms == 1000 + 100 + 4000 * 0.5  # small + verifier for all, large for half
    assert point.large_tokens == 60.0
    assert cascade_curve.at(records, "verify", 0.0).escalated == 0.0


def test_fit_picks_fewest_escalations_for_a_target_or_best_accuracy_in_a_budget():
    records = _records()
    assert cascade_curve.fit(records, "verify", target_relative=1.0).escalated == 0.5
    assert cascade_curve.fit(records, "verify", budget=0.25).accuracy == 0.5
    assert cascade_curve.fit(records, "verify", target_accuracy=0.9) is None


# --- the router: JSON only ------------------------------------------------------------------------

def test_router_trains_stores_json_and_refuses_anything_else(tmp_path):
    rng = np.random.default_rng(0)
    right, wrong = rng.normal(1, 0.3, (10, 4)), rng.normal(-1, 0.3, (10, 4))
    router = cascade_router.train(np.vstack([right, wrong]), [True] * 10 + [False] * 10, "emb", SMALL)
    assert router.confidence(np.ones(4)) > 0.8 and router.confidence(-np.ones(4)) < 0.2
    path = cascade_router.save(router, tmp_path)
    stored = json.loads(path.read_text(encoding="utf-8"))  # plain JSON, readable by anything
    assert stored["format"] == cascade_router.FORMAT and len(stored["weights"]) == 4
    loaded = cascade_router.load(tmp_path)
    assert loaded.confidence(np.ones(4)) == pytest.approx(router.confidence(np.ones(4)), abs=1e-6)
    path.write_bytes(pickle.dumps({"weights": [1.0]}))  # never unpickled: refused as unreadable
    with pytest.raises(cascade_router.RouterError, match="unreadable"):
        cascade_router.load(tmp_path)
    for broken in ({**stored, "weights": [1.0, float("nan")]}, {**stored, "bias": "1"}, {**stored, "format": "x"}):
        path.write_text(json.dumps(broken), encoding="utf-8")
        with pytest.raises(cascade_router.RouterError):
            cascade_router.load(tmp_path)
    with pytest.raises(cascade_router.RouterError, match="right and ones it got wrong"):
        cascade_router.train(right, [True] * 10, "emb", SMALL)


# --- faithfulness with the collection's real embedder ----------------------------------------------

def test_faithfulness_confidence_separates_supported_from_unsupported_answers(demo_home):
    from indexes.collection import Home

    embedder = Home(demo_home).open("demo").embedder
    encode = lambda texts: embedder.encode(list(texts))  # noqa: E731
    sources = [Source(1, "docs/chunking.md", "Chunking", "Documents are split into chunks of 200 tokens. "
                      "Consecutive chunks overlap by 32 tokens.", (0, 90), 1.0)]
    supported, _ = faithfulness_confidence("Documents are split into chunks of 200 tokens [1].", sources, encode)
    unsupported, _ = faithfulness_confidence("The capital of France is Paris. It lies on the Seine.", sources, encode)
    abstained, _ = faithfulness_confidence("I do not know; the sources do not say.", sources, encode)
    assert supported == 1.0 and unsupported == 0.0 and abstained == 0.0


# --- the CLI --------------------------------------------------------------------------------------

def test_bad_cascades_exit_2_with_the_reason(writable_demo_home, tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"id": "q", "question": "What is BM25?", "answers": ["x"], "doc": "d"}) + "\n")
    for text, reason in ((f"cascade:{SMALL}>{LARGE}?threshold=2", "between 0 and 1"),
                         (f"cascade:{SMALL}>{LARGE}?policy=router", "no trained cascade router")):
        done = run_mighty(writable_demo_home, "eval", "answers", str(qa), "-c", "demo", "--llm", text, env=twin_env())
        assert done.returncode == 2, done.stderr
        assert reason in done.stderr
    records = write_records(tmp_path / "r.jsonl", [r.__dict__ | {"small": r.small.__dict__, "large": r.large.__dict__}
                                                   for r in _records()])
    for args, reason in ((["--budget", "1.5"], "between 0 and 1"), ([], "give --budget"),
                         (["--budget", "0.5", "--policy", "vote"], "unknown policy")):
        done = run_mighty(writable_demo_home, "cascade", "fit", str(records), "-c", "demo", *args)
        assert done.returncode == 2 and reason in done.stderr, done.stderr


def test_fit_stores_the_chosen_cascade_on_the_collection(writable_demo_home, tmp_path):
    rows = [r.__dict__ | {"small": r.small.__dict__, "large": r.large.__dict__} for r in _records()]
    records = write_records(tmp_path / "r.jsonl", rows)
    done = run_mighty(writable_demo_home, "cascade", "fit", str(records), "-c", "demo", "--target-relative", "1.0",
                      "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["escalated"] == 0.5 and report["stored"]
    stored = json.loads((writable_demo_home / "collections" / "demo" / "collection.json").read_text())
    assert parse(stored["default_llm"]) == CascadeSpec(SMALL, LARGE, "verify", report["threshold"], 3)
    assert 0.3 < report["threshold"] <= 0.6  # escalates c and d, keeps a and b
    unreachable = run_mighty(writable_demo_home, "cascade", "fit", str(records), "-c", "demo",
                             "--target-accuracy", "0.9")
    assert unreachable.returncode == 1 and "no threshold meets the target" in unreachable.stderr


def test_train_router_stores_json_with_the_collection(writable_demo_home, tmp_path):
    done = run_mighty(writable_demo_home, "cascade", "train-router", str(router_records(tmp_path / "r.jsonl")),
                      "-c", "demo", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["trained_on"] == 8 and report["training_accuracy"] == 1.0
    router = cascade_router.load(writable_demo_home / "collections" / "demo")
    assert router.small == SMALL and router.embedder.endswith("all-MiniLM-L6-v2")


def test_eval_answers_with_a_cascade_prints_the_curve_from_one_pass(writable_demo_home, tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"id": "c1", "question": "What is the default chunk size?", "answers": ["200"],
                              "doc": "docs/concepts-chunking.md"}) + "\n")
    out = tmp_path / "records.jsonl"
    done = run_mighty(writable_demo_home, "eval", "answers", str(qa), "-c", "demo", "--llm",
                      cascade("faithfulness", 0.5, k=2), "--cards", "none", "--out", str(out), "--json",
                      env=twin_env())
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(report["curves"]) == {"verify", "faithfulness"}
    assert [b["label"] for b in report["baselines"]] == ["always-small", "always-large"]
    (line,) = out.read_text().splitlines()
    written = cascade_curve.CascadeRecord.from_dict(json.loads(line))
    assert written.small.latency_ms > 0 and written.large.latency_ms > 0 and written.overhead_ms["verify"] > 0
    assert written.verify["method"] == "logits"  # a local small model: P(yes) from two orderings' logits
    assert len(written.verify["per_ordering"]) == 2 and 0 < written.confidence["verify"] < 1
    assert written.confidence["verify"] == pytest.approx(sum(written.verify["per_ordering"]) / 2, abs=1e-5)
    assert written.verify["cached_tokens"] > 0  # the answer prompt came from the small model's KV cache
    point = cascade_curve.at([written], "faithfulness", 0.5)
    assert report["at_threshold"]["accuracy"] == point.accuracy
