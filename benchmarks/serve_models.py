"""Fused decoding through Ray Serve vs one process: what the model deployment's hop costs.

The SmolLM2 pair: SmolLM2-135M fused with a LoRA card on itself (random LoRA weights from
`tests/fusion_helpers.py`: the speed of fused decoding does not depend on what the card learned).
The same `POST /v1/fusion/generate` (one prompt, greedy, `--tokens` new tokens, mixture) is sent
`--rounds` times to a real `mighty serve` and to `mighty serve --ray local` (a local Ray started by
the server, ingress and one `local-models` replica), after one untimed request that loads the model.
Reported per system: end-to-end tokens/s over HTTP (completion tokens / wall time of the request)
and the decoder's own tokens/s (`stats.tokens_per_s`, measured where the decoding ran); the two
systems take turns round by round, so a load swing hits them alike.

    nice -n 10 .venv/bin/python benchmarks/serve_models.py [--tokens 64] [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from tests.fusion_helpers import BASE, make_lora_card  # noqa: E402
from tests.helpers import free_port, run_mighty, start_server  # noqa: E402

PROMPT = "The most important thing for a new startup is"


def timed(url: str, tokens: int) -> tuple[float, int, float]:
    """(wall seconds, completion tokens, decoder tokens/s) of one fused generation."""
    body = {"cards": ["bench"], "prompt": PROMPT, "max_tokens": tokens, "method": "mixture"}
    started = time.perf_counter()
    answer = httpx.post(f"{url}/v1/fusion/generate", json=body, timeout=600)
    wall = time.perf_counter() - started
    answer.raise_for_status()
    result = answer.json()
    return wall, result["usage"]["completion_tokens"], result["stats"]["tokens_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="serve-models-"))
    card = make_lora_card(root / "card", "bench", scale=0.03)
    home = root / "home"
    registered = run_mighty(home, "cards", "register", str(card))
    assert registered.returncode == 0, registered.stderr
    env = {**os.environ, "MIGHTY_HOME": str(home), "MIGHTY_LLM_TIMEOUT_S": "600"}
    servers, urls = [], {}
    try:
        for name, flags in (("one process", []), ("Ray Serve", ["--ray", "local"])):
            port = free_port()
            servers.append(start_server(["serve", "--port", str(port), "--no-auth", *flags], port, env,
                                        root / f"{name.replace(' ', '-')}.log", 600))
            urls[name] = f"http://127.0.0.1:{port}"
            timed(urls[name], 4)  # loads the base and the card
        runs: dict[str, list[tuple[float, int, float]]] = {name: [] for name in urls}
        for _ in range(args.rounds):
            for name, url in urls.items():
                runs[name].append(timed(url, args.tokens))
        print(f"| system | tokens/request | end-to-end tok/s (median) | decoder tok/s (median) | "
              f"median wall s |")
        print("|---|---|---|---|---|")
        for name, rows in runs.items():
            e2e = statistics.median(t / w for w, t, _ in rows)
            decoder = statistics.median(d for _, _, d in rows)
            wall = statistics.median(w for w, _, _ in rows)
            print(f"| {name} | {statistics.median(t for _, t, _ in rows):.0f} | {e2e:.1f} | {decoder:.1f} | "
                  f"{wall:.2f} |", flush=True)
        print(f"load average: {os.getloadavg()}")
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
