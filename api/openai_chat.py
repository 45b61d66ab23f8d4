"""OpenAI chat-completion envelopes, whole and streamed (server-sent events), built in one place.

Every route that answers in OpenAI's shapes (rag:, fusion: and plain LiteLLM models) uses these, so
a client sees the same fields whichever pipeline answered.
"""
from __future__ import annotations

import json
import time
from typing import Any

from fastapi.responses import StreamingResponse

DONE = "data: [DONE]\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(completion_id: str, model: str, text: str, usage: dict, finish_reason: str = "stop",
               citations: list | None = None) -> dict[str, Any]:
    """A `chat.completion` object; citations (rag:) go on the message and on the body."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    body = {"id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}], "usage": usage}
    if citations is not None:
        message["citations"] = citations
        body["citations"] = citations
    return body


def event(payload: dict) -> str:
    """One server-sent event carrying a JSON payload."""
    return f"data: {json.dumps(payload)}\n\n"


def chunk(completion_id: str, model: str, delta: dict, finish: str | None = None, **extra: Any) -> str:
    """A `chat.completion.chunk` event; extra fields (usage, citations, cards) ride on the last one."""
    return event({"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()),
                  "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})


def error_event(stage: str, message: str) -> str:
    return event({"error": {"stage": stage, "message": message}})


def sse(events) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
