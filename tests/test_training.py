"""Card training: held-out loss goes down, runs are deterministic and resumable, the split is by
document and recorded, and the CLI reports it all (or a clear error).

Mechanics (determinism, resume, CLI) run on a tiny random Llama that shares SmolLM2's tokenizer, so
they take seconds; the "loss decreases" test trains the real SmolLM2-135M base.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from experts.manifest import load_manifest
from experts.models import load_adapter, load_tokenizer
from experts.training.corpus import CorpusError, load_corpus, split_heldout
from experts.training.run import TrainRequest, prepare, train_card
from experts.training.settings import TrainSettings
from tests.helpers import run_mighty

torch.set_num_threads(1)  # on a shared CPU one thread beats two spinning ones (RESULTS.md)

PLANETS = ["Arvo", "Belin", "Corsa", "Dunmar", "Elsket", "Farrow", "Gilde", "Hosk", "Ivra", "Jentu", "Kesh", "Lormu"]


def _essay(planet: str, number: int) -> str:
    return (f"Survey note {number}. The moon of {planet} has a thin ring of blue ice. The survey crew of "
            f"{planet} measured the ring at dawn and at dusk, and the blue ice of {planet} was brighter at "
            f"dusk. The crew of {planet} filed note {number} with the survey office.")


def _write_corpus(folder: Path, chunks_per_essay: int = 2) -> Path:
    """JSONL chunks of 12 essays; neighbouring chunks of one essay overlap, as chunked corpora do."""
    lines = []
    for number, planet in enumerate(PLANETS):
        text = " ".join(_essay(planet, number * 10 + part) for part in range(chunks_per_essay + 1))
        step = len(text) // (chunks_per_essay + 1)
        for part in range(chunks_per_essay):
            chunk = text[part * step:(part + 2) * step]  # overlaps the next chunk by `step` characters
            lines.append(json.dumps({"_id": f"{planet}-{part}", "title": f"The rings of {planet}", "text": chunk}))
    path = folder / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    return _write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer, saved as safetensors: any causal LM folder works."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-base")
    LlamaForCausalLM(config).save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def _tiny_settings(base: Path, **changes) -> TrainSettings:
    values = dict(base=str(base), steps=6, batch_size=2, micro_batch=2, block_size=32, rank=4, lr=1e-2,
                  heldout_fraction=0.25, eval_tokens=0, seed=3)
    values.update(changes)
    return TrainSettings(**values)


def _request(corpus: Path, out: Path, settings: TrainSettings, **changes) -> TrainRequest:
    return TrainRequest(corpus=str(corpus), name="rings", out=out, settings=settings, checkpoint_every=2, **changes)


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


def test_chunks_are_grouped_by_title_and_the_split_is_by_document(corpus_file, tiny_base):
    corpus = load_corpus(str(corpus_file))
    assert corpus.key == "title" and len(corpus.documents) == len(PLANETS)
    first = corpus.documents[0]
    expected = " ".join(_essay(PLANETS[0], part) for part in range(3))
    assert first.text == expected[:len(first.text)] and len(first.text) >= 2 * len(expected) // 3 - 1

    keys = [document.key for document in corpus.documents]
    heldout = split_heldout(keys, 0.25, seed=3)
    assert len(heldout) == 3 and heldout == split_heldout(keys, 0.25, seed=3)
    assert heldout != split_heldout(keys, 0.25, seed=4)
    assert len(split_heldout(keys, 0.01, seed=3)) == 1  # at least one document is always held out

    tokenizer = load_tokenizer(str(tiny_base))
    data = prepare(corpus, heldout, tokenizer, _tiny_settings(tiny_base))
    train_text = tokenizer.decode(data.train_blocks.input_ids.flatten())
    held_text = tokenizer.decode(data.eval_blocks.input_ids.flatten())
    for key in keys:
        planet = key.removeprefix("The rings of ")
        if key in heldout:
            assert planet not in train_text and planet in held_text
        else:
            assert planet in train_text and planet not in held_text


def test_heldout_loss_decreases_on_the_real_base(corpus_file, tmp_path):
    settings = TrainSettings(steps=6, batch_size=2, micro_batch=2, block_size=48, rank=4, lr=3e-3,
                             heldout_fraction=0.25, eval_tokens=96, seed=0)
    report = train_card(_request(corpus_file, tmp_path / "card", settings))
    assert report.finished and report.heldout_tokens > 0
    assert report.heldout_ppl_card < report.heldout_ppl_base


def test_same_seed_gives_identical_weights(corpus_file, tiny_base, tmp_path):
    first = train_card(_request(corpus_file, tmp_path / "a", _tiny_settings(tiny_base)))
    second = train_card(_request(corpus_file, tmp_path / "b", _tiny_settings(tiny_base)))
    other = train_card(_request(corpus_file, tmp_path / "c", _tiny_settings(tiny_base, seed=5)))
    a, b, c = _adapter(tmp_path / "a"), _adapter(tmp_path / "b"), _adapter(tmp_path / "c")
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    assert any(not torch.equal(a[name], c[name]) for name in a)
    assert first.heldout_ppl_card == second.heldout_ppl_card
    assert first.heldout_ppl_card < first.heldout_ppl_base  # the tiny model learns the corpus too
    assert other.heldout_keys != first.heldout_keys


def test_resumed_run_ends_on_the_same_weights(corpus_file, tiny_base, tmp_path):
    settings = _tiny_settings(tiny_base, steps=7)
    whole = train_card(_request(corpus_file, tmp_path / "whole", settings))
    # Killed after step 3: the last checkpoint is step 2, so step 3's work is lost and redone.
    stopped = train_card(_request(corpus_file, tmp_path / "split", settings, stop_after=3))
    assert not stopped.finished and stopped.steps == 3
    assert not (tmp_path / "split" / "card.toml").exists()
    resumed = train_card(_request(corpus_file, tmp_path / "split", settings))
    assert resumed.finished and resumed.resumed_from == 2 and whole.resumed_from == 0
    a, b = _adapter(tmp_path / "whole"), _adapter(tmp_path / "split")
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert resumed.heldout_ppl_card == whole.heldout_ppl_card
    assert not (tmp_path / "split" / "checkpoint").exists()  # training state goes once the card is complete


def test_cli_trains_reports_json_and_records_the_split(corpus_file, tiny_base, tmp_path):
    home = tmp_path / "home"
    args = ["cards", "train", "--corpus", str(corpus_file), "--name", "rings", "--base", str(tiny_base),
            "--steps", "4", "--batch-size", "2", "--block-size", "32", "--rank", "4", "--lr", "0.01",
            "--heldout-fraction", "0.25", "--eval-tokens", "0", "--kind", "both", "--owner", "astro",
            "--checkpoint-every", "2", "--json", "--no-register"]
    killed = run_mighty(home, *args, env={"MIGHTY_FAILPOINT": "train-checkpoint:2"})
    assert killed.returncode == -9, killed.stderr
    result = run_mighty(home, *args)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["resumed_from"] == 2 and report["steps"] == 4
    for field in ("heldout_ppl_base", "heldout_ppl_card", "train_seconds", "train_tokens_per_s"):
        assert report[field] > 0
    assert report["heldout_documents"] == 3 and report["train_documents"] == 9

    card = home / "training" / "rings"
    manifest = load_manifest(card)
    assert manifest.name == "rings" and manifest.owner == "astro" and manifest.kind == ["fusion", "knowledge"]
    assert manifest.heldout.documents == report["heldout_keys"] and manifest.heldout.key == "title"
    assert manifest.heldout.corpus == str(corpus_file.resolve())
    assert manifest.heldout.corpus_sha256 == load_corpus(str(corpus_file)).sha256
    assert manifest.metrics.heldout_ppl_card == pytest.approx(report["heldout_ppl_card"], rel=1e-3)
    assert manifest.metrics.steps == 4 and manifest.training["rank"] == 4
    assert sorted(p.name for p in (card / "adapter").iterdir()) == ["adapter_config.json",
                                                                     "adapter_model.safetensors"]
    loaded = load_adapter(manifest.model.base, card / manifest.model.adapter)  # loads back onto its base
    assert loaded.model.config.num_hidden_layers == 2

    from api.cli.main import app  # in-process: the refusal comes before any model loads

    again = CliRunner().invoke(app, ["--home", str(home), *args])  # a finished card is never silently replaced
    assert again.exit_code == 1 and "--overwrite" in again.output
    assert load_manifest(card).metrics == manifest.metrics


@pytest.mark.parametrize("case", ["missing", "empty", "single", "bad-json", "unknown-base", "bad-name",
                                  "bad-version"])
def test_bad_input_is_a_clear_error(case, tmp_path):
    from api.cli.main import app

    corpus = tmp_path / "corpus.jsonl"
    good = json.dumps({"_id": "a", "title": "A", "text": "alpha"}) + "\n" + json.dumps(
        {"_id": "b", "title": "B", "text": "beta"}) + "\n"
    corpus.write_text({"missing": "", "empty": "", "single": good.splitlines()[0] + "\n",
                       "bad-json": good + "{not json\n"}.get(case, good), encoding="utf-8")
    if case == "missing":
        corpus.unlink()
    args = ["--home", str(tmp_path / "home"), "cards", "train", "--corpus", str(corpus), "--name",
            "Bad Name" if case == "bad-name" else "x", "--no-register"]
    if case == "unknown-base":
        args += ["--base", "no-such-org/no-such-model"]
    if case == "bad-version":
        args += ["--version", "two words"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())
    expected = {"missing": f"{corpus}: no such file", "empty": "the corpus is empty", "single": "at least 2",
                "bad-json": f"{corpus}:3: malformed JSON", "unknown-base": "no-such-org/no-such-model",
                "bad-name": "--name 'Bad Name'", "bad-version": "version: Value error, version must be"}[case]
    assert expected in message
    assert not (tmp_path / "home" / "training" / "x" / "card.toml").exists()


def test_a_collection_corpus_is_its_documents_rebuilt_from_chunks(tmp_path):
    from indexes.collection import Home
    from indexes.config import ChunkingConfig, CollectionConfig
    from indexes.readers import read_paths

    folder = tmp_path / "notes"
    folder.mkdir()
    texts = {}
    for number in range(3):
        text = f"# Notes {number}\n\n" + " ".join(f"Fact {line} of notebook {number}." for line in range(40))
        (folder / f"n{number}.md").write_text(text, encoding="utf-8")
        texts[f"Notes {number}"] = text
    collection = Home(tmp_path / "home").create(CollectionConfig(name="notes",
                                                                 chunking=ChunkingConfig(size=48, overlap=12)))
    with collection.writer() as writer:
        for document in read_paths([str(folder)], collection.config.max_document_bytes):
            writer.upsert(document)
        writer.commit()
    assert collection.stats()["chunks"] > 3 * 2  # several overlapping chunks per document

    corpus = load_corpus("collection:notes", tmp_path / "home")
    assert corpus.key == "title" and corpus.name == "notes"
    assert {document.key: document.text for document in corpus.documents} == texts


def test_corpus_errors_name_the_problem(tmp_path):
    with pytest.raises(CorpusError, match="collection:nothing"):
        load_corpus("collection:nothing", tmp_path)
    with pytest.raises(CorpusError, match="at least 2"):
        split_heldout(["only"], 0.1, seed=0)


def test_a_new_card_version_is_the_next_free_whole_number():
    from api.cli.train_commands import next_free_version

    assert next_free_version([]) == "1"
    assert next_free_version(["1", "2"]) == "3"
    assert next_free_version(["1.0.0", "4", "2"]) == "5"


def test_defaults_are_per_base_and_what_the_user_gives_wins(monkeypatch):
    """The documented default base is Qwen2.5-Coder-0.5B with its own settings; the suite trains on
    SmolLM2 through $MIGHTY_CARD_BASE (tests/conftest.py)."""
    from experts.training.run import steers_for

    assert TrainSettings().base == "smollm2-135m-instruct"  # conftest's fast base
    monkeypatch.delenv("MIGHTY_CARD_BASE")
    qwen = TrainSettings()
    assert qwen.base == "qwen2.5-coder-0.5b-instruct"
    assert (qwen.steps, qwen.last_layers, qwen.lr, qwen.block_size) == (64, 8, 2e-3, 256)
    smol = TrainSettings(base="smollm2-135m-instruct")
    assert (smol.steps, smol.last_layers, smol.lr) == (80, None, 3e-3)
    mine = TrainSettings(steps=5, last_layers=0, lr=1e-3)  # 0: every layer
    assert (mine.steps, mine.last_layers, mine.lr) == (5, 0, 1e-3)
    assert TrainSettings(epochs=1).steps is None and TrainSettings(epochs=1).last_layers == 8
    explicit = TrainSettings(steps=64)
    assert explicit.fingerprint("c", ["a"]) == qwen.fingerprint("c", ["a"])  # the default is that run
    assert mine.fingerprint("c", ["a"]) != qwen.fingerprint("c", ["a"])
    request = _request(Path("corpus.jsonl"), Path("out"), qwen)
    assert steers_for(request) == ["qwen2.5-coder-1.5b-instruct"]  # a 0.5B card declares the 1.5B base
    assert steers_for(_request(Path("corpus.jsonl"), Path("out"), smol)) == []
