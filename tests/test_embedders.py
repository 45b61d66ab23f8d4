"""Embedder backends agree with sentence-transformers, and ONNX exports are made once and reused."""
from __future__ import annotations

import numpy as np

from indexes.config import EmbedderConfig, model_cache_dir
from indexes.embedders import load_embedder

TEXTS = ["how do generations keep readers safe", "Sea otters hold hands while they sleep.", "",
         "BM25 " * 300, "Fahrenheit invented the mercury thermometer in 1714."]


def test_onnx_backends_agree_with_torch():
    reference = load_embedder(EmbedderConfig(backend="torch")).encode(TEXTS)
    exact = load_embedder(EmbedderConfig(backend="onnx")).encode(TEXTS)
    int8 = load_embedder(EmbedderConfig(backend="onnx-int8")).encode(TEXTS)
    assert exact.shape == reference.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(exact, axis=1), 1.0, atol=1e-5)
    assert (exact * reference).sum(axis=1).min() > 0.9999
    assert (int8 * reference).sum(axis=1).min() > 0.95
    assert (int8 * reference).sum(axis=1).mean() > 0.98


def test_onnx_export_is_cached():
    from indexes.onnx_embedder import OnnxEmbedder

    model = load_embedder(EmbedderConfig(backend="onnx")).onnx_path
    assert model.is_relative_to(model_cache_dir() / "onnx") and model.exists()
    before = model.stat().st_mtime_ns
    again = OnnxEmbedder(EmbedderConfig(backend="onnx", batch_size=8))
    again.encode(["again"])
    assert again.onnx_path == model and model.stat().st_mtime_ns == before
    assert not list(model.parent.glob(".*.tmp"))


def test_length_sorted_batches_come_back_in_input_order_and_equal_one_by_one():
    from indexes.onnx_embedder import OnnxEmbedder

    rng = np.random.default_rng(4)
    words = "otters thermometer generations readers mercury hands sleep index".split()
    texts = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(1, 60, 23)]  # mixed lengths, unsorted
    embedder = OnnxEmbedder(EmbedderConfig(backend="onnx", batch_size=4))  # 6 batches, each padded to its longest
    together = embedder.encode(texts)
    alone = np.stack([embedder.encode([text])[0] for text in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert len({round(float(v), 4) for v in together[:, 0]}) > 15  # distinct rows: a reordering would show
