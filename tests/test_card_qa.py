"""Card knowledge for an answerer, side by side, and fitted routing thresholds, run for real.

`mighty eval answers --settings all` answers through a scripted OpenAI-compatible model (so what each
setting showed the model can be read off its requests) with a tiny registered SmolLM2 card writing
the knowledge. `mighty cards route-fit` fits a threshold on a crafted split where the server's
threshold routes nothing, stores it as a new card version, and routing follows it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rag.prompts import CLOSED_BOOK_PROMPT, SYSTEM_PROMPT
from tests.cards_helpers import make_card
from tests.helpers import run_mighty
from tests import test_answer_eval
from tests.test_answer_eval import ScriptedModel, _qa_lines

scripted_model = test_answer_eval.scripted_model  # the scripted OpenAI-compatible model, as a fixture here
CHUNK = re.compile(r'<source id="\d+" title="[^"]*">')  # a retrieved chunk (card knowledge has an origin)
UNCHECKED = '{"factuality": false, "relevance_min": -1.0}'  # keep what the untrained card writes


@pytest.fixture(scope="module")
def card_folder(tmp_path_factory) -> Path:
    return make_card(tmp_path_factory.mktemp("card") / "essays")


def _register(home: Path, folder: Path) -> None:
    registered = run_mighty(home, "cards", "register", str(folder))
    assert registered.returncode == 0, registered.stderr


def test_four_settings_show_the_model_what_they_say(writable_demo_home, tmp_path, scripted_model, card_folder):
    _register(writable_demo_home, card_folder)
    qa = tmp_path / "qa.jsonl"
    qa.write_text(_qa_lines())
    out = tmp_path / "answers.jsonl"
    result = run_mighty(writable_demo_home, "eval", "answers", str(qa), "--collection", "demo",
                        "--llm", "openai/scripted", "--api-base", scripted_model, "--api-key", "unused",
                        "--cards", "essays", "--card-selectors", UNCHECKED, "--settings", "all",
                        "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    rows = {row["setting"]: row for row in report["settings"]}
    assert [(r["setting"], r["sources"], r["knowledge"]) for r in report["settings"]] == [
        ("alone", False, False), ("card", False, True), ("retrieval", True, False), ("retrieval+card", True, True)]
    assert all(r["questions"] == 3 and r["errors"] == 0 and r["p50_ms"] > 0 for r in report["settings"])
    # citation and hit rates exist only where something was retrieved
    assert rows["alone"]["citation_accuracy"] is None and rows["card"]["hit@5"] is None
    assert rows["retrieval"]["citation_accuracy"] == round(2 / 3, 4)
    assert rows["card"]["card_knowledge"] == rows["retrieval+card"]["card_knowledge"] == 1.0
    assert rows["alone"]["card_knowledge"] == rows["retrieval"]["card_knowledge"] == 0.0

    # what each setting put in front of the model: 3 answers per setting, in the order of the report
    answered = [r["messages"] for r in ScriptedModel.requests if r.get("stream")]
    assert len(answered) == 12
    per_setting = [answered[i:i + 3] for i in range(0, 12, 3)]
    for messages, (closed, chunks, card) in zip(per_setting, [(True, False, False), (True, False, True),
                                                              (False, True, False), (False, True, True)]):
        for system, user in ((m[0]["content"], m[-1]["content"]) for m in messages):
            assert system.startswith(CLOSED_BOOK_PROMPT if closed else SYSTEM_PROMPT)
            assert ('origin="card:essays@1"' in user) == card
            assert bool(CHUNK.search(user)) == chunks
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["setting"] for line in lines] == [s for s in rows for _ in range(3)]
    assert all(line["card_knowledge"] == rows[line["setting"]]["knowledge"] for line in lines)


def test_settings_refuse_bad_input_with_clear_errors(writable_demo_home, tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text(_qa_lines('{"id": "t8", "question": "q?", "answers": ["x"], "doc": "d", "title": 3}\n'
                            '{"id": "t9", "question": "q?", "answers": ["x"]}\n'))
    base = ("eval", "answers", str(qa), "--collection", "demo", "--llm", "local/smollm2-135m-instruct")
    unknown_card = run_mighty(writable_demo_home, *base, "--cards", "nope", "--settings", "all")
    assert unknown_card.returncode == 2 and "card 'nope' is not registered" in unknown_card.stderr
    assert f"{qa}:4: 'title', when given, must be a non-empty string" in unknown_card.stderr
    assert f"{qa}:5: 'doc' must be a non-empty string" in unknown_card.stderr
    no_cards = run_mighty(writable_demo_home, *base, "--cards", "none", "--settings", "alone,card")
    assert no_cards.returncode == 2 and "the card settings need cards" in no_cards.stderr
    bad_setting = run_mighty(writable_demo_home, *base, "--settings", "alone,closed")
    assert bad_setting.returncode == 2 and "unknown setting(s) 'closed'" in bad_setting.stderr
    bad_selectors = run_mighty(writable_demo_home, *base, "--settings", "all", "--cards", "auto",
                               "--card-selectors", '{"factuality_min": 7}')
    assert bad_selectors.returncode == 2 and "--card-selectors: factuality_min" in bad_selectors.stderr
    for result in (unknown_card, no_cards, bad_setting, bad_selectors):
        assert "Traceback" not in result.stderr


def test_route_fit_stores_a_threshold_that_changes_routing(writable_demo_home, tmp_path, card_folder):
    _register(writable_demo_home, card_folder)
    positives = tmp_path / "essays.txt"
    positives.write_text("\n".join([
        "Why should founders of a startup talk to their users early?",
        "What does Paul Graham say about raising money from angel investors?",
        "How should startup founders pick a cofounder?",
        "Why do startups that launch fast do better?",
        "What does Paul Graham think makes a good startup idea?",
        "How do founders of a startup decide when to hire employees?",
        "What do Paul Graham's essays say about programming in Lisp?",
        "Why are startup founders advised to move to Silicon Valley?"]) + "\n")
    negatives = tmp_path / "off.jsonl"
    negatives.write_text("".join(json.dumps({"_id": str(i), "text": text}) + "\n" for i, text in enumerate([
        "how long to bake a loaf of banana bread", "best temperature for roasting a chicken",
        "what is the capital of peru", "how many legs does a spider have", "symptoms of seasonal flu",
        "how to remove rust from a cast iron pan", "tallest waterfall in south america",
        "how do tides form on the ocean"])))
    env = {"MIGHTY_CARD_ROUTE_THRESHOLD": "0.95"}  # the server's threshold: nothing is routed
    common = ("--positives", f"essays={positives}", "--negatives", str(negatives), "--json")

    before = run_mighty(writable_demo_home, "cards", "route-check", *common, env=env)
    assert before.returncode == 0, before.stderr
    (card,) = json.loads(before.stdout)["cards"]
    assert card["threshold"] == 0.95 and card["recall"] == 0.0 and card["precision"] is None

    fitted = run_mighty(writable_demo_home, "cards", "route-fit", *common, env=env)
    assert fitted.returncode == 0, fitted.stderr
    report = json.loads(fitted.stdout)
    (row,) = report["cards"]
    assert report["fit_questions"] == 8 and report["heldout_questions"] == 8 and report["stored"] == ["essays@2"]
    assert row["threshold_before"] == 0.95 and row["threshold_after"] < 0.95
    assert row["heldout_before"]["recall"] == 0.0 and row["heldout_after"]["recall"] > 0.0
    assert row["fit_after"]["recall"] > 0.0

    shown = json.loads(run_mighty(writable_demo_home, "cards", "show", "essays", "--json").stdout)
    assert shown["active_version"] == "2"
    routing = shown["versions"][-1]["manifest"]["routing"]
    assert routing["threshold"] == row["threshold_after"] and routing["fit_examples"] == 8
    assert routing["heldout_recall"] == row["heldout_after"]["recall"]

    after = run_mighty(writable_demo_home, "cards", "route-check", *common, env=env)
    (card,) = json.loads(after.stdout)["cards"]
    assert card["threshold"] == row["threshold_after"] and card["recall"] > 0.0  # routing follows the card

    unknown = run_mighty(writable_demo_home, "cards", "route-fit", "--positives", f"nope={positives}", env=env)
    assert unknown.returncode == 1 and "no active knowledge card named 'nope'" in unknown.stderr
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"id": 2}\n')
    bad = run_mighty(writable_demo_home, "cards", "route-fit", "--positives", f"essays={positives}",
                     "--negatives", str(broken), env=env)
    assert bad.returncode == 1 and f"{broken}:2: a line needs a non-empty 'question' or 'text'" in bad.stderr
    assert "Traceback" not in unknown.stderr + bad.stderr
