"""Text rules every local generation shares: message content, stop strings, and what is safe to stream.

One home, because streamed and whole outputs must agree byte for byte whichever model (plain, LoRA,
fused) produced the tokens.
"""
from __future__ import annotations

from typing import Any


def message_text(content: Any) -> str:
    """Message content as text: OpenAI-style content may be a list of typed parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """Text up to the earliest stop string, and whether one occurred."""
    positions = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(positions)], True) if positions else (text, False)


def settled(text: str, stops: list[str]) -> str:
    """The prefix of text that no later token can change: no partial character or stop-string prefix."""
    text = text.rstrip("\ufffd")
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:size]):
                hold = size
                break
    return text[: len(text) - hold]
