"""Card lookup, held-out splits and storing fits as new card versions (no model weights)."""
from __future__ import annotations

import json

import pytest

from experts.fusion.cards import CardNotFound, next_version, resolve_card, store_fit
from experts.fusion.corpus import CorpusError, file_sha256, split_corpus
from experts.manifest import FusionSettings, ManifestError, load_manifest
from tests.fusion_helpers import tiny_corpus, write_corpus, write_manifest


def card_folder(tmp_path, name="essays", kind="fusion", heldout=None):
    folder = tmp_path / name
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    write_manifest(folder, name, kind=kind, heldout=heldout)
    return folder


def test_cards_are_found_by_folder_and_must_be_fusion_cards(tmp_path):
    card = resolve_card(str(card_folder(tmp_path)))
    assert card.label == "essays@1.0.0" and card.adapter == card.folder / "adapter"
    with pytest.raises(ManifestError, match="not a fusion card"):
        resolve_card(str(card_folder(tmp_path, "facts", kind="knowledge")))
    with pytest.raises(CardNotFound, match="card folder"):
        resolve_card(str(tmp_path / "missing"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "card.toml").write_text('name = "x"\nversion = "1"\n[model\n')
    with pytest.raises(ManifestError, match=r"card.toml:\d+"):
        resolve_card(str(broken))


def test_a_fit_is_stored_as_a_new_version_and_the_original_is_untouched(tmp_path):
    folder = card_folder(tmp_path)
    before = (folder / "card.toml").read_text()
    fit = FusionSettings(method="mixture", base="smollm2-135m-instruct", weights=[0.6, 0.4], validation_nll=3.2)
    stored = store_fit(resolve_card(str(folder)), fit)
    assert stored.folder == folder.with_name("essays-fit") and stored.manifest.version == "1.0.1"
    assert stored.manifest.fusion.weights == [0.6, 0.4] and (stored.folder / "adapter").is_dir()
    assert (folder / "card.toml").read_text() == before
    assert load_manifest(stored.folder).fusion.method == "mixture"
    with pytest.raises(FileExistsError, match="never overwritten"):
        store_fit(resolve_card(str(folder)), fit)
    assert [next_version(v) for v in ("1.0.0", "2", "1.0-beta")] == ["1.0.1", "3", "1.0-beta.1"]


def test_on_its_training_corpus_only_a_cards_heldout_documents_are_used(tmp_path):
    corpus = tiny_corpus(tmp_path / "corpus.jsonl", documents=8)
    titles = [json.loads(line)["title"] for line in corpus.read_text().splitlines()]
    heldout = {"corpus": str(corpus), "corpus_sha256": file_sha256(corpus), "documents": titles[:4]}
    card = resolve_card(str(card_folder(tmp_path, heldout=heldout)))
    split = split_corpus(corpus, [card], fit_fraction=0.5)
    assert set(split.fit_documents) | set(split.score_documents) == set(titles[:4])
    assert not set(split.fit_documents) & set(split.score_documents)
    assert "held-out documents of essays@1.0.0" in split.note
    # a copy elsewhere (another path and hash) is recognised by its documents' titles
    copy = tmp_path / "copy.jsonl"
    copy.write_text(corpus.read_text() + "\n")
    assert set(split_corpus(copy, [card]).score_documents) <= set(titles[:4])
    other = write_corpus(tmp_path / "other.jsonl", [(f"Other essay {i}", f"Some other text {i}.") for i in range(6)])
    everything = split_corpus(other, [card])
    assert len(everything.fit_documents) + len(everything.score_documents) == 6
    assert everything.note.startswith("no card was trained on this corpus")


def test_chunks_of_a_document_are_joined_without_their_shared_text():
    from experts.fusion.corpus import join_chunks

    first = "Startups grow fast. Understand your users well."
    second = "Understand your users well. Then build what they need."
    assert join_chunks([first, second]) == "Startups grow fast. Understand your users well. Then build what they need."
    assert join_chunks(["No overlap here.", "Another part."]) == "No overlap here.\n\nAnother part."


def test_bad_corpora_are_reported_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "a", "text": "fine"}\n{"title": "b", "text": \n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: not valid JSON"):
        split_corpus(bad, [])
    single = tiny_corpus(tmp_path / "one.jsonl", documents=1)
    with pytest.raises(CorpusError, match="at least 2"):
        split_corpus(single, [])
