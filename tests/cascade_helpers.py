"""Shared by the cascade tests: a second name for SmolLM2 (so both sides of a cascade are real local
models and fast) and hand-written evaluation records."""
from __future__ import annotations

import json
from pathlib import Path

SMALL = "local/smollm2-135m-instruct"
LARGE = "local/smollm2-twin"  # the same GGUF under a second name (MIGHTY_LOCAL_MODELS)

# questions the crafted "small model" got right (about the demo docs) and wrong (off the corpus)
RIGHT = ["What is the default chunk size?", "How many tokens overlap between chunks?",
         "How are documents split into chunks?", "What chunk size does a collection use?"]
WRONG = ["What is the capital of France?", "Who wrote the play Hamlet?",
         "How tall is Mount Everest?", "Which planet is closest to the sun?"]


def twin_env() -> dict[str, str]:
    from rag.runtime.registry import locate_gguf

    return {"MIGHTY_LOCAL_MODELS": f"smollm2-twin={locate_gguf()}"}


def cascade(policy: str, threshold: float, k: int = 3) -> str:
    return f"cascade:{SMALL}>{LARGE}?policy={policy}&threshold={threshold}&k={k}"


def record(question: str, small_correct: bool, large_correct: bool = True, confidence: dict | None = None,
           small_ms: float = 1000.0, large_ms: float = 4000.0, overhead: dict | None = None, index: int = 0) -> dict:
    side = {"answer": "", "f1": 0.0, "prompt_tokens": 100, "error": None}
    return {"id": f"q{index}", "question": question, "golds": ["x"], "cascade": cascade("verify", 0.5),
            "small_model": SMALL, "large_model": LARGE, "prepare_ms": 0.0,
            "small": {**side, "correct": small_correct, "latency_ms": small_ms, "completion_tokens": 10},
            "large": {**side, "correct": large_correct, "latency_ms": large_ms, "completion_tokens": 20},
            "confidence": confidence or {}, "overhead_ms": overhead or {}}


def write_records(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def router_records(path: Path) -> Path:
    """Right on the chunking questions, wrong on the off-corpus ones: what a router should learn."""
    rows = [record(q, True, index=i) for i, q in enumerate(RIGHT)]
    rows += [record(q, False, index=len(RIGHT) + i) for i, q in enumerate(WRONG)]
    return write_records(path, rows)
