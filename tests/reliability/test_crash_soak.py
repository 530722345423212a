"""Crash soak: a tiny two-iteration `dnpo run` killed with SIGKILL and resumed, many times.

The kill plan and the delays come from `DNPO_SOAK_SEED` (default 0), so a failure can
be replayed with `python tests/reliability/crash_soak.py --seed N --workdir DIR`.
"""

import os

import pytest
from crash_soak import STAGES, clean_run, soak_at_random_times, soak_at_writes

SEED = int(os.environ.get("DNPO_SOAK_SEED", "0"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("soak")
    expected, seconds = clean_run(workdir)
    return workdir, expected, seconds


def assert_intact(result):
    assert result.mismatches == []
    assert result.duplicates == {}
    assert result.torn_files == []
    assert result.pickle_files == []
    assert result.leftover_temp_files == []


def test_kills_in_every_stage_lose_nothing(clean):
    workdir, expected, _ = clean
    result = soak_at_writes(workdir, expected, kills=10, seed=SEED)

    assert len(result.kills) == 10
    for kill in result.kills:
        assert kill.returncode == -9, f"{kill.spec} was never reached"
        assert kill.landed_stage == kill.stage, kill.spec
    killed = {(kill.iteration, kill.stage) for kill in result.kills}
    every_stage = {(iteration, stage) for iteration, stages in STAGES.items() for stage in stages}
    assert killed == every_stage
    assert {kill.mode for kill in result.kills} <= {"after", "before"}
    assert_intact(result)
    # Generations, judgments, pairs, held-out answers and reference log-probs of both iterations.
    assert result.records_compared == 54


def test_kills_at_random_times_lose_nothing(clean):
    workdir, expected, _ = clean
    result = soak_at_random_times(workdir, expected, kills=5, seed=SEED)

    # A kill late in a stage can let the run finish the next drawn stages, which are then skipped.
    assert 3 <= len(result.kills) <= 5
    assert sum(kill.returncode == -9 for kill in result.kills) >= 3
    assert_intact(result)
