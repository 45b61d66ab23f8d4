"""The whole bad-input corpus (`tests/adversarial/cases_*.py`) against one real server and the real CLI.

Each case is its own test. The last test checks what no single case can: not one 5xx across the
corpus, every seeded document of both homes intact, the server still healthy, and no temporary
upload folder left behind.
"""
from __future__ import annotations

import pytest

from tests.adversarial import all_cases
from tests.adversarial.runner import (Tally, build_fixtures, cli_problems, final_problems, rest_problems, run_cli,
                                      running_server, send_rest)

REST_CASES, CLI_CASES = all_cases()
_tally = Tally()


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return build_fixtures(tmp_path_factory.mktemp("adversarial"))


@pytest.fixture(scope="module")
def server(fixtures):
    with running_server(fixtures) as running:
        yield running


@pytest.mark.parametrize("case", REST_CASES, ids=[c.name for c in REST_CASES])
def test_rest_case(server, case, tmp_path):
    outcome = send_rest(server, case, tmp_path)
    problems = rest_problems(case, outcome)
    _tally.add(case, outcome, problems)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.name for c in CLI_CASES])
def test_cli_case(fixtures, case, tmp_path):
    outcome, lost = run_cli(fixtures, case, tmp_path)
    problems = cli_problems(case, outcome, lost)
    _tally.add(case, outcome, problems)
    assert not problems, "\n".join(problems)


def test_corpus_left_no_5xx_no_loss_and_a_healthy_server(server):
    problems, lost = final_problems(server)
    assert _tally.five_xx == 0, [f for f in _tally.failures if "status 5" in f]
    assert _tally.failed_jobs == 0, [f for f in _tally.failures if "job ended" in f]
    assert lost == 0 and not problems, "\n".join(problems)
