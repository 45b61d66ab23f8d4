"""Card knowledge for the black-box path: selectors on crafted passages, routing, writing, the whole stage."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from experts.card_knowledge import CardChoiceError, CardKnowledge
from experts.knowledge import KnowledgeWriter
from experts.manifest import CardManifest, load_manifest
from experts.routing import CardRouter
from experts.selectors import SelectorSettings, check_facts, prune, select_relevant
from tests.cards_helpers import make_card

EVIDENCE = ["The Eiffel Tower is in Paris. It was completed in 1889 for the World's Fair, and it is 330 metres tall.",
            "Paris is the capital of France."]


@pytest.fixture(scope="module")
def encode():
    from indexes.config import EmbedderConfig
    from indexes.embedders import load_embedder

    embedder = load_embedder(EmbedderConfig())
    return lambda texts: embedder.encode(list(texts))


@dataclass
class Card:
    manifest: CardManifest
    path: Path


class Cards:
    """The registry's read side, in memory."""

    def __init__(self, cards: list[Card]) -> None:
        self.cards = {c.manifest.name: c for c in cards}

    def active_cards(self) -> list[Card]:
        return list(self.cards.values())

    def get(self, name: str, version: str | None = None) -> Card:
        if name not in self.cards:
            raise LookupError(name)
        return self.cards[name]


def test_factuality_drops_an_unsupported_sentence_and_keeps_a_supported_one(encode):
    supported, off_topic, wrong_facts = ("The Eiffel Tower was finished in 1889.",
                                         "Bananas are the main export of Iceland's volcano farms.",
                                         "The Eiffel Tower was built in Rome in 1920.")
    kept, report = check_facts([supported, off_topic, wrong_facts], EVIDENCE, encode, SelectorSettings())
    assert kept == [supported]
    assert report.unsupported == 2 and set(report.dropped_sentences) == {off_topic, wrong_facts}
    assert report.support[0] > report.support[1]


def test_factuality_without_evidence_keeps_nothing_unless_switched_off(encode):
    sentences = ["The Eiffel Tower was finished in 1889."]
    assert check_facts(sentences, [], encode, SelectorSettings())[0] == []
    assert check_facts(sentences, [], encode, SelectorSettings(factuality=False))[0] == sentences


def test_relevance_keeps_the_best_passages_above_the_floor(encode):
    passages = ["Startups need cofounders who can build things.", "The Eiffel Tower was completed in 1889 in Paris.",
                "Iron lattice towers were popular in the nineteenth century."]
    kept, report = select_relevant("When was the Eiffel Tower built?", passages, encode,
                                   SelectorSettings(relevance_keep=1))
    assert [text for text, _ in kept] == [passages[1]]
    assert report.kept == 1 and report.dropped == 2
    none_kept, _ = select_relevant("When was the Eiffel Tower built?", passages[:1], encode,
                                   SelectorSettings(relevance_min=0.5))
    assert none_kept == []


def test_pruning_keeps_relevant_sentences_within_budget_in_reading_order(encode):
    passage = ("Many tourists buy ice cream nearby. The Eiffel Tower was completed in 1889. "
               "It is made of wrought iron. The Eiffel Tower was completed in 1889.")
    words = lambda text: len(text.split())  # noqa: E731 - a token counter for the test
    kept, report = prune("When was the Eiffel Tower completed, and what is it made of?", [passage], encode, words,
                         SelectorSettings(prune_tokens=16))
    assert kept == ["The Eiffel Tower was completed in 1889.", "It is made of wrought iron."]
    assert report.duplicates == 1 and report.tokens <= 16 and report.sentences_in == 4


@pytest.fixture(scope="module")
def essay_card(tmp_path_factory) -> Card:
    folder = make_card(tmp_path_factory.mktemp("cards") / "essays")
    return Card(load_manifest(folder), folder)


@pytest.fixture(scope="module")
def cooking_card(tmp_path_factory) -> Card:
    folder = make_card(tmp_path_factory.mktemp("cards") / "cooking", "cooking", description="Recipes for bread, "
                       "pastry and baking temperatures", domain="baking", owner="kitchen", seed=1)
    return Card(load_manifest(folder), folder)


def test_routing_consults_only_cards_that_fit_the_query(encode, essay_card, cooking_card):
    router = CardRouter(encode, centroid=lambda card: None, threshold=0.3, max_cards=2)
    decisions = {d.card: d for d in router.route("How long should I bake sourdough bread?", [essay_card, cooking_card])}
    assert decisions["cooking"].selected and not decisions["essays"].selected
    assert "below the routing threshold" in decisions["essays"].reason
    assert decisions["cooking"].description_similarity > decisions["essays"].description_similarity
    one = CardRouter(encode, centroid=lambda card: None, threshold=-1.0, max_cards=1)
    assert sum(d.selected for d in one.route("bread", [essay_card, cooking_card])) == 1


def test_routing_uses_the_corpus_centroid_when_it_fits_better(encode, essay_card):
    centroid = encode(["How to bake sourdough bread at home"])[0]
    router = CardRouter(encode, centroid=lambda card: centroid, threshold=0.5)
    (decision,) = router.route("baking sourdough bread", [essay_card])
    assert decision.selected and decision.centroid_similarity > decision.description_similarity
    assert "corpus centroid" in decision.reason


def test_writer_batches_k_passages_and_caches_by_query_and_version(essay_card):
    writer = KnowledgeWriter()
    first = writer.write(essay_card, "Why do startups need cofounders?")
    assert not first.cached and 1 <= len(first.passages) <= essay_card.manifest.generation.passages
    assert all(isinstance(p, str) and p for p in first.passages)
    again = writer.write(essay_card, "Why do startups need cofounders?")
    assert again.cached and again.passages == first.passages
    fresh = KnowledgeWriter().write(essay_card, "Why do startups need cofounders?")
    assert fresh.passages == first.passages  # seeded by query and card version: the cache only saves time


def test_stage_reports_choices_and_refuses_unknown_or_fusion_only_cards(encode, essay_card, tmp_path):
    fusion_only = make_card(tmp_path / "fusion", "tokens", kind="fusion", seed=2)
    cards = Cards([essay_card, Card(load_manifest(fusion_only), fusion_only)])
    stage = CardKnowledge(cards, encode, lambda text: len(text.split()), CardRouter(encode, lambda c: None),
                          KnowledgeWriter())
    with pytest.raises(CardChoiceError, match="not registered"):
        stage.run("anything", ["missing"])
    with pytest.raises(CardChoiceError, match="cannot write knowledge"):
        stage.run("anything", ["tokens"])
    assert stage.run("anything", "none").items == []
    auto = stage.run("Why do startups need cofounders?", "auto")
    assert [d.card for d in auto.considered] == ["essays"]  # the fusion-only card is never a candidate


def test_stage_turns_supported_knowledge_into_a_cited_card_source(encode, essay_card):
    written = KnowledgeWriter().write(essay_card, "Why do startups need cofounders?").passages
    evidence_seen = []

    def evidence(card, texts):
        evidence_seen.append(list(texts))
        return list(written), "the card's own passages, as if retrieved from its collection"

    stage = CardKnowledge(Cards([essay_card]), encode, lambda text: len(text.split()),
                          CardRouter(encode, lambda c: None), KnowledgeWriter(), evidence=evidence,
                          settings=SelectorSettings(relevance_min=-1.0, factuality_names=False))
    result = stage.run("Why do startups need cofounders?", ["essays"])
    (report,) = result.cards
    assert report.used and report.factuality["unsupported"] == 0 and evidence_seen
    (source,) = result.sources()
    assert source.kind == "card" and source.id == "card:essays@1" and source.text
    assert result.report()["considered"][0]["reason"] == "named on the request"


def strong_adapter(source: Path, target: Path, factor: float = 20.0) -> Path:
    """The tiny adapter with B scaled up: its effect must stand well above the engines' own difference."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    weights = load_file(str(target / "adapter_model.safetensors"))
    save_file({k: v * factor if "lora_B" in k else v for k, v in weights.items()},
              str(target / "adapter_model.safetensors"))
    return target


def adapter_effects(card_model, reference_base, reference_card, texts: list[str]) -> list[dict]:
    """Per prompt: the adapter's effect on next-token log-probs (card minus base) on the runtime and in
    transformers, over the 200 tokens transformers' base finds likeliest (the ones sampling can reach)."""
    import torch

    from rag.runtime import get_model

    base = get_model(card_model.name)
    rows = []
    for text in texts:
        ids = base.encode(text)
        with base.lock, card_model.lock:
            base.reset()
            card_model.reset()
            rt_base = torch.log_softmax(base.prefill(ids).double(), -1)
            rt_card = torch.log_softmax(card_model.prefill(ids).double(), -1)
        with torch.inference_mode():
            hf_base = torch.log_softmax(reference_base(torch.tensor([ids])).logits[0, -1].double(), -1)
            hf_card = torch.log_softmax(reference_card(torch.tensor([ids])).logits[0, -1].double(), -1)
        top = torch.topk(hf_base, 200).indices
        runtime_effect, hf_effect = (rt_card - rt_base)[top], (hf_card - hf_base)[top]
        rows.append({"engine_gap": float((rt_base - hf_base)[top].abs().mean()),
                     "effect": float(hf_effect.abs().mean()),
                     "effect_gap": float((runtime_effect - hf_effect).abs().mean()),
                     "cosine": float(torch.nn.functional.cosine_similarity(runtime_effect, hf_effect, dim=0)),
                     "same_top": int(rt_card.argmax()) == int(hf_card.argmax())})
    return rows


EFFECT_PROMPTS = ["The capital of France is", "Startups fail because", "The best way to learn programming is"]


def test_a_cards_lora_on_llama_cpp_has_the_same_effect_as_in_transformers(tiny_adapter, tmp_path, monkeypatch):
    """Card knowledge writes with the card's model on the runtime: the base GGUF with the peft adapter
    converted to a GGUF LoRA and applied by llama.cpp. Its effect must equal the same adapter's in
    transformers (peft on the dequantised GGUF). The two engines differ even without an adapter,
    because llama.cpp multiplies the Q4_1 weights with activations quantised to 8 bits (Q8_1) and keeps
    K/V in f16: about 0.1 nat mean absolute difference over the likeliest 200 tokens, measured as
    `engine_gap`. The adapter moves those log-probs by several times that, and must move them alike."""
    from peft import PeftModel

    from experts.knowledge import card_model
    from experts.models import load_base
    from tests.cards_helpers import write_card

    folder = write_card(tmp_path / "card", strong_adapter(tiny_adapter, tmp_path / "strong"))
    card = Card(load_manifest(folder), folder)
    runtime_card = card_model(card)
    assert runtime_card.backend == "llama.cpp" and runtime_card.adapter.suffix == ".gguf"
    reference_base = load_base(card.manifest.model.base, fresh=True).model
    reference_card = PeftModel.from_pretrained(load_base(card.manifest.model.base, fresh=True).model,
                                               str(folder / "adapter")).eval()
    rows = adapter_effects(runtime_card, reference_base, reference_card, EFFECT_PROMPTS)
    for row in rows:
        assert row["effect"] > 2.5 * row["engine_gap"], row  # the adapter really matters here
        assert row["cosine"] > 0.9, row  # and moves the same tokens the same way
        assert row["effect_gap"] < 2.5 * row["engine_gap"], row  # differing only as much as the engines do
    assert sum(row["same_top"] for row in rows) >= len(rows) - 1

    # the check can fail: llama-architecture GGUFs permute q/k rows for rotary embeddings, and an adapter
    # converted without permuting its q_proj B moves other tokens than transformers does
    import rag.runtime.lora as lora

    monkeypatch.setattr(lora, "_PERMUTED_ARCHS", set())
    monkeypatch.setattr(lora, "_FORMAT", -1)  # another cache key: a fresh, unpermuted conversion
    from rag.runtime import load_model

    wrong = load_model(card.manifest.model.base, adapter=folder / "adapter")
    wrong_rows = adapter_effects(wrong, reference_base, reference_card, EFFECT_PROMPTS)
    assert min(r["cosine"] for r in wrong_rows) < min(r["cosine"] for r in rows) - 0.1


def test_factuality_wants_a_sentences_names_together_in_one_supporting_text(encode):
    """A recombination of true pieces is a wrong fact: VisiCorp's role given to IBM, with IBM named
    elsewhere in the evidence; and a name opening the sentence is checked like any other."""
    evidence = ["In the early 1980s VisiCorp showed that a software company could make a fortune selling spreadsheets.",
                "Years later IBM bought a small operating system for its PC."]
    right, recombined = ("VisiCorp showed that a software company could make a fortune selling spreadsheets.",
                         "IBM showed that a software company could make a fortune selling spreadsheets.")
    kept, report = check_facts([right, recombined], evidence, encode, SelectorSettings(factuality_min=0.5))
    assert kept == [right] and report.dropped_sentences == [recombined]


def test_next_to_retrieved_sources_only_what_they_do_not_already_say_is_added(encode, essay_card):
    """With the supporting passages already in the prompt, the card's checked sentences are restated
    and dropped; with the same passages found only in the card's collection, they are new and kept."""
    question = "Why do startups need cofounders?"
    written = list(KnowledgeWriter().write(essay_card, question).passages)
    stage = CardKnowledge(Cards([essay_card]), encode, lambda text: len(text.split()),
                          CardRouter(encode, lambda c: None), KnowledgeWriter(),
                          evidence=lambda card, texts: (written, "the card's own passages"),
                          settings=SelectorSettings(relevance_min=-1.0, factuality_names=False))
    alone = stage.run(question, ["essays"])
    (fresh,) = alone.cards
    assert fresh.used and fresh.novelty["restated"] == 0 and alone.sources()
    beside_sources = stage.run(question, ["essays"], request_evidence=written)
    (restated,) = beside_sources.cards
    assert not restated.used and not beside_sources.sources()
    assert restated.novelty["restated"] == restated.novelty["checked"] == fresh.factuality["supported"] > 0
