import pytest

from dnpo.messages import format_count


@pytest.mark.parametrize(
    ("count", "expected"),
    [(0, "0 rows"), (1, "1 row"), (2, "2 rows"), (-1, "-1 rows")],
)
def test_format_count_regular_plural(count, expected):
    assert format_count(count, "row") == expected


def test_format_count_irregular_plural():
    assert format_count(1, "entry", "entries") == "1 entry"
    assert format_count(3, "entry", "entries") == "3 entries"
