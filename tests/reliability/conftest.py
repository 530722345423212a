"""Fixtures of the reliability tests: the scripted judge server and one judged `dnpo run`."""

import pytest
from fault_run import start_judged_run

from chat_server import api_key, chat_server  # noqa: F401


@pytest.fixture(scope="session")
def judged_run(tmp_path_factory):
    run = start_judged_run(tmp_path_factory.mktemp("judged"))
    yield run
    run.server.stop()
