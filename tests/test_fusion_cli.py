"""`mighty fusion eval` and `mighty fusion fit` run as a user would, on a card with a recorded held-out split."""
from __future__ import annotations

import json

import pytest

from experts.fusion.cards import resolve_card
from experts.fusion.corpus import file_sha256, split_corpus
from experts.fusion.fused import tokenizer_of
from experts.manifest import load_manifest
from tests.fusion_helpers import BASE, make_lora_card, tiny_corpus
from tests.helpers import run_mighty

METHODS = {"mixture", "product", "proxy", "entropy", "learned"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A card 'trained' on half of a corpus: its manifest records the other half as held out."""
    root = tmp_path_factory.mktemp("fusion-cli")
    corpus = tiny_corpus(root / "corpus.jsonl", documents=8)
    titles = [json.loads(line)["title"] for line in corpus.read_text().splitlines()]
    heldout = {"corpus": str(corpus), "corpus_sha256": file_sha256(corpus), "documents": titles[4:]}
    card = make_lora_card(root / "card", "essays", scale=0.08, heldout=heldout)
    return {"root": root, "corpus": corpus, "card": card, "heldout": titles[4:]}


def test_eval_scores_only_heldout_documents_and_reports_every_rule(setup):
    done = run_mighty(setup["root"] / "home", "fusion", "eval", "--card", str(setup["card"]), "--corpus",
                      str(setup["corpus"]), "--speed-tokens", "4", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["base"] == BASE and set(report["ppl_fused"]) == METHODS and set(report["weights"]) == METHODS
    assert list(report["ppl_expert"]) == ["essays@1.0.0"]
    assert report["tokens_per_s_base"] > 0 and report["tokens_per_s_fused"] > 0
    # exactly the tokens of the held-out documents set aside for scoring: no training document is scored
    split = split_corpus(setup["corpus"], [resolve_card(str(setup["card"]))])
    assert set(split.score_documents) <= set(setup["heldout"]) and set(split.fit_documents) <= set(setup["heldout"])
    tokenizer = tokenizer_of(BASE)
    assert report["tokens"] == sum(len(tokenizer(text)["input_ids"]) - 1 for text in split.score)
    assert report["fit_tokens"] == sum(len(tokenizer(text)["input_ids"]) - 1 for text in split.fit)
    assert "held-out documents of essays@1.0.0" in report["split"]


def test_fit_lowers_validation_nll_and_stores_a_new_card_version(setup):
    out = setup["root"] / "essays-fitted"
    done = run_mighty(setup["root"] / "home", "fusion", "fit", "--card", str(setup["card"]), "--corpus",
                      str(setup["corpus"]), "--method", "learned", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["validation_nll"] < result["validation_nll_equal_weights"]
    manifest = load_manifest(out)
    assert manifest.version == "1.0.1" and manifest.fusion.method == "learned" and manifest.fusion.gate
    assert manifest.fusion.validation_nll == pytest.approx(result["validation_nll"])
    assert load_manifest(setup["card"]).version == "1.0.0"  # the original card is untouched
    again = run_mighty(setup["root"] / "home", "fusion", "fit", "--card", str(setup["card"]), "--corpus",
                       str(setup["corpus"]), "--out", str(out), "--max-tokens", "20")
    assert again.returncode == 2 and "already exists" in again.stderr

    from experts.fusion.service import load_decoder

    decoder = load_decoder(None, [resolve_card(str(out))])
    assert decoder.params.method == "learned" and decoder.params.gate is not None  # serving uses the fit


def test_bad_input_exits_non_zero_naming_the_file_and_line(setup, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "a", "text": "fine"}\nnot json\n')
    done = run_mighty(setup["root"] / "home", "fusion", "eval", "--card", str(setup["card"]), "--corpus", str(bad))
    assert done.returncode == 2 and f"{bad}:2" in done.stderr
    missing = run_mighty(setup["root"] / "home", "fusion", "fit", "--card", str(tmp_path / "nope"), "--corpus",
                         str(setup["corpus"]))
    assert missing.returncode == 2 and "no card" in missing.stderr
