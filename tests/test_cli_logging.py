import logging

import pytest

from dnpo.cli import configure_logging


@pytest.fixture
def absl_logger():
    logger = logging.getLogger("absl")
    saved_level = logger.level
    saved_root_level = logging.getLogger().level
    yield logger
    logger.setLevel(saved_level)
    logging.getLogger().setLevel(saved_root_level)


@pytest.mark.parametrize(
    ("level_name", "expected"),
    [("INFO", logging.WARNING), ("DEBUG", logging.DEBUG), ("ERROR", logging.ERROR)],
)
def test_absl_logger_level_follows_log_level(absl_logger, level_name, expected):
    configure_logging(level_name)
    assert absl_logger.level == expected


def test_rouge_tokenizer_info_not_logged(absl_logger, caplog):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    configure_logging("INFO")
    with caplog.at_level(logging.INFO):
        rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    assert "Using default tokenizer" not in caplog.text
