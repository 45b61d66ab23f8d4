"""Mighty's local-model runtime: every local generation (the `local/` LLM, card knowledge, fused
decoding) runs through `LocalModel`, on llama.cpp for GGUF files and transformers for HF folders."""
import os

# llama.cpp (built with OpenMP) and torch share libgomp: with its default active wait, idle worker
# threads spin and, on a shared CPU, steal the cores the next layer needs. Passive waiting measured
# 17 -> 27 tokens/s (greedy) and 4.7 -> 28 tokens/s (sampled) for SmolLM2 at load ~7. Effective when
# set before the OpenMP runtime starts (the CLI sets it first thing too).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from rag.runtime.cache import get_model, load_model
from rag.runtime.decode import Decoded, GenerationTimeout
from rag.runtime.model import LocalModel, NextToken
from rag.runtime.registry import DEFAULT_LOCAL_MODEL, LOCAL_MODELS, LocalModelError, resolve_model
from rag.runtime.sampling import LOOP_NGRAM, SamplingOptions

__all__ = ["DEFAULT_LOCAL_MODEL", "LOCAL_MODELS", "LOOP_NGRAM", "Decoded", "GenerationTimeout", "LocalModel",
           "LocalModelError", "NextToken", "SamplingOptions", "get_model", "load_model", "resolve_model"]
