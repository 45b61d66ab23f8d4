"""Vocabulary compatibility: other families are refused before weights load; extra tokens are truncated."""
from __future__ import annotations

import pytest
import torch

from experts.fusion.cards import resolve_card
from experts.fusion.combine import FusionParams
from experts.fusion.decoder import FusedDecoder
from experts.fusion.fused import FusedModel, tokenizer_of
from rag.runtime.sampling import SamplingOptions
from experts.fusion.vocab import VocabularyMismatch, plan_vocabulary
from tests.fusion_helpers import BASE, tiny_model, write_manifest

GEMMA = "gemma3-270m"
EXTRA = ["<|extra_a|>", "<|extra_b|>", "<|extra_c|>"]


def manifest_only_card(folder, name, base):
    """A card whose adapter is never loaded: refusal must happen before any weights are read."""
    folder.mkdir(parents=True)
    write_manifest(folder, name, base=base)
    return resolve_card(str(folder))


@pytest.mark.parametrize(("base", "card_base"), [(GEMMA, BASE), (BASE, GEMMA)])
def test_another_model_family_is_refused_naming_both_models(tmp_path, base, card_base):
    card = manifest_only_card(tmp_path / "card", "other-family", card_base)
    with pytest.raises(VocabularyMismatch) as refused:
        FusedModel(base, [card])
    message = str(refused.value)
    assert base in message and card_base in message and "other-family@1.0.0" in message
    assert "vocabularies differ" in message
    assert len(tokenizer_of(GEMMA)) == 262144  # the real Gemma 3 tokenizer was compared


@pytest.fixture(scope="module")
def extended(tmp_path_factory):
    """A tiny base with SmolLM2's tokenizer, and a full-model card whose tokenizer adds three tokens that
    its head makes the most likely ones at every step."""
    root = tmp_path_factory.mktemp("vocab")
    tokenizer = tokenizer_of(BASE)
    base = tiny_model(len(tokenizer), seed=0)
    base.save_pretrained(root / "base", safe_serialization=True)
    tokenizer.save_pretrained(root / "base")

    card = root / "card"
    tokenizer = tokenizer_of(str(root / "base"))
    grown = type(tokenizer).from_pretrained(str(root / "base"))
    grown.add_tokens(EXTRA)
    expert = tiny_model(len(grown), seed=1)
    with torch.no_grad():
        head = expert.lm_head.weight
        direction = torch.randn(head.shape[1])
        head[-3], head[-2], head[-1] = 50 * direction, -50 * direction, 0 * direction
    expert.save_pretrained(card / "model", safe_serialization=True)
    grown.save_pretrained(card / "model")
    write_manifest(card, "grown", base=str(root / "base"), adapter=None, full="model")
    return str(root / "base"), resolve_card(str(card)), expert


def test_an_expert_with_extra_tokens_is_fused_on_the_shared_prefix(extended):
    base, card, expert = extended
    model = FusedModel(base, [card])
    assert model.vocab.size == 49152 and model.vocab.truncated == {f"grown@1.0.0 (on {base})": 3}
    decoder = FusedDecoder(model, FusionParams("mixture", (0.0, 1.0)))  # the expert alone
    prompt = decoder.encode_text("Startups are")
    with torch.inference_mode():
        alone = expert(torch.tensor([prompt])).logits[0, -1]
        assert int(alone.argmax()) >= 49152  # on its own the expert would emit an extra token
    with model.session() as session:
        logprobs, _ = session.start(prompt)
    # the fused distribution is the expert's, renormalised over the shared ids
    assert torch.allclose(logprobs[1], torch.log_softmax(alone[:49152], -1), atol=1e-5)
    generated = decoder.generate([prompt], SamplingOptions(max_tokens=6))[0].token_ids
    assert len(generated) == 6 and max(generated) < 49152


def test_truncation_can_be_turned_off(extended):
    base, card, _ = extended
    with pytest.raises(VocabularyMismatch, match="truncation to the shared prefix is turned off"):
        FusedModel(base, [card], allow_truncation=False)


def test_a_shifted_vocabulary_is_refused(extended):
    base, _, _ = extended
    tokenizer = tokenizer_of(base)

    class Shifted:  # the same tokens, one id later: every id means something else
        def __len__(self):
            return len(tokenizer)

        def get_vocab(self):
            return {token: (index + 1) % len(tokenizer) for token, index in tokenizer.get_vocab().items()}

    with pytest.raises(VocabularyMismatch, match="id 0 is"):
        plan_vocabulary(("base", tokenizer), [("shifted", Shifted())])
