"""Embedder backends agree with sentence-transformers, and ONNX exports are made once and reused."""
from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

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
    # The empty text ([CLS] [SEP] only) is the hardest row (~0.978); the mean is ~0.992 here, against
    # ~0.987 when every weight MatMul is quantised, so this bound also notices the old recipe.
    assert (int8 * reference).sum(axis=1).min() > 0.97
    assert (int8 * reference).sum(axis=1).mean() > 0.99
    assert (int8 * exact).sum(axis=1).min() < 0.99999  # it is really the quantised model


def test_onnx_int8_keeps_the_ffn_output_projections_in_fp32():
    int8_path = load_embedder(EmbedderConfig(backend="onnx-int8")).onnx_path
    fp32 = onnx.load(str(int8_path.parent / "model.onnx"))
    int8 = onnx.load(str(int8_path))
    assert int8_path.name != "model.int8.onnx"  # files quantised by the old recipe are not reused
    weights = {init.name for init in fp32.graph.initializer}
    dense = [n.name for n in fp32.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    # The exporter names the FFN output projection `layer.N/output/dense`; attention's is `attention/output/dense`.
    ffn_out = {name for name in dense if "/output/dense/" in name and "/attention/" not in name}
    assert len(dense) == 36 and len(ffn_out) == 6  # MiniLM-L6: 6 layers x (q, k, v, attn out, ffn in, ffn out)
    int8_weights = {init.name for init in int8.graph.initializer}
    still_fp32 = {n.name for n in int8.graph.node if n.op_type == "MatMul" and n.input[1] in int8_weights}
    assert still_fp32 == ffn_out
    assert sum(n.op_type == "MatMulInteger" for n in int8.graph.node) == len(dense) - len(ffn_out)


def _tiny_graph(with_gelu: bool) -> onnx.ModelProto:
    """x @ W1 -> (GELU, erf form | nothing) -> @ W2: two weight MatMuls named "a" and "b", so only structure can tell them apart."""
    rng = np.random.default_rng(0)
    w1, w2 = (numpy_helper.from_array(rng.normal(size=(16, 16)).astype(np.float32), n) for n in ("w1", "w2"))
    half, one, root2 = (numpy_helper.from_array(np.array(v, dtype=np.float32), n)
                        for n, v in (("half", 0.5), ("one", 1.0), ("root2", 2 ** 0.5)))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="a")]
    if with_gelu:
        nodes += [helper.make_node("Div", ["h", "root2"], ["d"], name="g1"),
                  helper.make_node("Erf", ["d"], ["e"], name="g2"),
                  helper.make_node("Add", ["e", "one"], ["p"], name="g3"),
                  helper.make_node("Mul", ["h", "p"], ["m"], name="g4"),
                  helper.make_node("Mul", ["m", "half"], ["act"], name="g5")]
    else:
        nodes += [helper.make_node("Identity", ["h"], ["act"], name="g1")]
    nodes += [helper.make_node("MatMul", ["act", "w2"], ["y"], name="b")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 16])],
                              [w1, w2, half, one, root2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_quantize_finds_gelu_by_structure_and_warns_when_there_is_none(tmp_path, caplog):
    from indexes.onnx_embedder import _ffn_output_matmuls, _quantize

    for with_gelu in (True, False):
        source, target = tmp_path / f"{with_gelu}.onnx", tmp_path / f"{with_gelu}.int8.onnx"
        onnx.save(_tiny_graph(with_gelu), str(source))
        assert _ffn_output_matmuls(onnx.load(str(source))) == (["b"] if with_gelu else [])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="indexes.onnx_embedder"):
            _quantize(source, target)
        ops = {n.name: n.op_type for n in onnx.load(str(target)).graph.node}
        int8_matmuls = sorted(name for name, op in ops.items() if op == "MatMulInteger")
        assert (ops.get("b"), len(int8_matmuls)) == (("MatMul", 1) if with_gelu else (None, 2))
        warned = [r for r in caplog.records if r.name == "indexes.onnx_embedder" and "no MatMul" in r.getMessage()]
        assert bool(warned) is not with_gelu


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
