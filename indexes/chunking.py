"""Token-aware chunking with the embedder's own tokenizer.

Chunks are measured in the embedder's tokens (so none is silently truncated at embedding time) but
cut on character offsets into the original text, so every chunk is an exact, citable span.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from indexes.config import ChunkingConfig
from indexes.documents import Chunk, SourceDocument

_SENTENCE_END = re.compile(r"[.!?:;]\s*$|\n\s*$")
_SNAP_WINDOW = 0.35  # look for a sentence end in the last 35% of a full window


@lru_cache(maxsize=8)
def load_fast_tokenizer(model_dir: str):
    """The `tokenizers` backend of a model, with its truncation and padding turned off."""
    from tokenizers import Tokenizer

    path = Path(model_dir) / "tokenizer.json"
    if path.is_file():
        tokenizer = Tokenizer.from_file(str(path))
    else:  # a hub id or a folder without tokenizer.json: let transformers build the fast tokenizer
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir, use_fast=True).backend_tokenizer
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


class TokenChunker:
    """Split documents into overlapping windows of at most `size` tokens, preferring sentence ends."""

    def __init__(self, tokenizer, config: ChunkingConfig) -> None:
        self.tokenizer = tokenizer
        self._size = config.size
        self._overlap = config.overlap

    def split(self, document: SourceDocument) -> list[Chunk]:
        text = document.text
        offsets = [span for span in self.tokenizer.encode(text, add_special_tokens=False).offsets]
        if not offsets:
            return []
        chunks: list[Chunk] = []
        start_token = 0
        while start_token < len(offsets):
            end_token = min(start_token + self._size, len(offsets))
            if end_token < len(offsets):
                end_token = self._snap_to_sentence_end(text, offsets, start_token, end_token)
            start_char, end_char = offsets[start_token][0], offsets[end_token - 1][1]
            chunks.append(Chunk(document.id, len(chunks), text[start_char:end_char], start_char, end_char,
                                document.title, document.metadata))
            if end_token >= len(offsets):
                break
            start_token = max(end_token - self._overlap, start_token + 1)
        return chunks

    def _snap_to_sentence_end(self, text: str, offsets, start: int, end: int) -> int:
        earliest = end - int((end - start) * _SNAP_WINDOW)
        for candidate in range(end, max(earliest, start + 1), -1):
            gap = text[offsets[candidate - 1][1]:offsets[candidate][0]] if candidate < len(offsets) else ""
            if _SENTENCE_END.search(text[offsets[candidate - 1][0]:offsets[candidate - 1][1]] + gap):
                return candidate
        return end
