"""A Hugging Face model folder on transformers, behind the same `LocalModel` interface.

This engine is for what has no GGUF: a full-model card saved by training, or a folder a user
brings. Converting such a folder to GGUF would need llama.cpp's `convert_hf_to_gguf.py` (not
shipped in the llama-cpp-python wheel) and a quantisation step per card, so folders run here in
float32 instead (slower, exact). Registered models and GGUF files always run on llama.cpp.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch

from rag.runtime.llama import threads_for
from rag.runtime.model import LocalModel
from rag.runtime.registry import LocalModelError
from rag.runtime.text import message_text


class TransformersModel(LocalModel):
    backend = "transformers"

    def __init__(self, name: str, folder: Path, threads: int | None = None, model: Any = None,
                 tokenizer: Any = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name, self.folder = name, Path(folder)
        self.threads = threads_for(name, threads)
        self.lock = threading.RLock()
        try:
            self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            # float32: this CPU has no bf16 units, and bf16 prefill measured ~5x slower here
            self.model = model or AutoModelForCausalLM.from_pretrained(
                str(folder), dtype=torch.float32, local_files_only=True, use_safetensors=True)
        except (OSError, ValueError) as error:
            raise LocalModelError(f"model folder {folder} does not load: {error}") from error
        self.model.eval()
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        eos = self.model.generation_config.eos_token_id
        ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        self.eos_ids = frozenset(ids)
        self._past: Any = None
        self._length = 0

    def tokenize(self, text: str, special: bool = True, add_bos: bool = False) -> list[int]:
        return self.tokenizer(text, add_special_tokens=add_bos)["input_ids"]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def chat_tokens(self, messages: list[dict[str, Any]]) -> list[int]:
        chat = [{"role": m.get("role", "user"), "content": message_text(m.get("content"))} for m in messages]
        if self.tokenizer.chat_template:
            return list(self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
                                                           return_dict=True)["input_ids"])
        plain = "".join(f"{m['role']}: {m['content']}\n" for m in chat) + "assistant: "
        return self.tokenizer(plain)["input_ids"]

    def _forward(self, tokens: list[int], past: Any) -> Any:
        torch.set_num_threads(self.threads)
        with torch.inference_mode():
            return self.model(torch.tensor([tokens]), past_key_values=past, use_cache=True)

    def prefill(self, tokens: list[int]) -> torch.Tensor:
        if not tokens:
            raise ValueError("a prompt needs at least one token")
        out = self._forward(tokens, None)
        self._past, self._length = out.past_key_values, len(tokens)
        return out.logits[0, -1]

    def step(self, token: int) -> torch.Tensor:
        out = self._forward([token], self._past)
        self._past, self._length = out.past_key_values, self._length + 1
        return out.logits[0, -1]

    def score(self, tokens: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(torch.tensor([tokens]), use_cache=False).logits[0]

    def reset(self) -> None:
        self._past, self._length = None, 0
