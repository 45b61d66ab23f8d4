"""Mighty's local-model runtime: every local generation (the `local/` LLM, card knowledge, fused
decoding) runs through `LocalModel`, on llama.cpp for GGUF files and transformers for HF folders."""
from rag.runtime.cache import get_model, load_model
from rag.runtime.decode import Decoded, GenerationTimeout
from rag.runtime.model import LocalModel
from rag.runtime.registry import DEFAULT_LOCAL_MODEL, LOCAL_MODELS, LocalModelError, resolve_model
from rag.runtime.sampling import LOOP_NGRAM, SamplingOptions

__all__ = ["DEFAULT_LOCAL_MODEL", "LOCAL_MODELS", "LOOP_NGRAM", "Decoded", "GenerationTimeout", "LocalModel",
           "LocalModelError", "SamplingOptions", "get_model", "load_model", "resolve_model"]
