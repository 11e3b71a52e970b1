import pytest

from jobwire.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("2d", 172800),
        ("1h30m", 5400),
        ("1.5s", 1.5),
        ("10", 10),
        (7, 7.0),
        (0.25, 0.25),
        (" 2 m ", 120),
    ],
)
def test_parses_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "5 minutes", "1x", "m5", "-3s", -1, True, None, [1], "5m3"])
def test_rejects_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "9" * 400, 10**400])
def test_rejects_durations_that_are_not_finite(bad: object) -> None:
    with pytest.raises(ValueError, match="finite"):
        parse_duration(bad)
