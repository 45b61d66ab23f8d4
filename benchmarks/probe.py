"""Send the whole bad-input corpus to a real `mighty serve --auth` and to the real CLI, and count.

    python benchmarks/probe.py [--json] [--only SUBSTRING]

Builds the same fixtures as `tests/test_adversarial.py` in a temporary folder (a seeded home with
keys for every role, a second home that must stay unreachable), sends every case of every
`tests/adversarial/cases_*.py` module, and prints: inputs tried (REST/CLI), errors that named
file:line, 5xx seen, failed jobs, data lost and traversal/injection attempts that succeeded. The
last four must be 0: the exit status is 1 otherwise (and 2 if some case got another wrong answer).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.adversarial import all_cases  # noqa: E402
from tests.adversarial.runner import (Tally, build_fixtures, cli_problems, final_problems, rest_problems,  # noqa: E402
                                      run_cli, running_server, send_rest)


def probe(only: str | None) -> tuple[Tally, list[str]]:
    rest, cli = all_cases()
    rest = [c for c in rest if not only or only in c.name]
    cli = [c for c in cli if not only or only in c.name]
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="mighty-probe-") as scratch:
        root = Path(scratch)
        fixtures = build_fixtures(root / "fixtures")
        with running_server(fixtures) as server:
            for index, case in enumerate(rest):
                outcome = send_rest(server, case, root / f"rest-{index}")
                tally.add(case, outcome, rest_problems(case, outcome))
            for index, case in enumerate(cli):
                outcome, lost = run_cli(fixtures, case, root / f"cli-{index}")
                tally.data_lost += lost
                tally.add(case, outcome, cli_problems(case, outcome, lost))
            after, lost = final_problems(server)
            tally.data_lost += lost
    return tally, after


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON counts")
    parser.add_argument("--only", help="cases whose name contains this")
    args = parser.parse_args()
    tally, after = probe(args.only)
    counts = {"rest_inputs": tally.rest_tried, "cli_inputs": tally.cli_tried,
              "errors_naming_file_line": tally.named_location, "five_xx": tally.five_xx,
              "failed_jobs": tally.failed_jobs, "data_lost": tally.data_lost, "breaches": tally.breaches,
              "wrong_answers": len(tally.failures), "after_corpus": after}
    if not args.json:
        rows = [("inputs tried (REST)", tally.rest_tried, ""), ("inputs tried (CLI)", tally.cli_tried, ""),
                ("errors that named file:line", tally.named_location, ""),
                ("5xx seen", tally.five_xx, "must be 0"), ("failed jobs", tally.failed_jobs, "must be 0"),
                ("data lost", tally.data_lost, "must be 0"),
                ("traversal/injection attempts that succeeded", tally.breaches, "must be 0"),
                ("cases answered otherwise than expected", len(tally.failures), "")]
        for label, value, note in rows:
            print(f"{label:<46} {value:>6}  {note}")
        for failure in tally.failures + after:
            print(f"  - {failure[:400]}")
    print(json.dumps(counts))
    if tally.five_xx or tally.failed_jobs or tally.data_lost or tally.breaches or after:
        return 1
    return 2 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
