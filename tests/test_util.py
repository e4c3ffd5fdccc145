"""pyipc._util: the deadline helpers every family uses, and the shared
argument checks."""
from __future__ import annotations

import time

import pytest

from pyipc._util import (FOREVER, NOWAIT, channel_deadline, check_int, check_mode, deadline,
                         format_size)

pytestmark = pytest.mark.quick


@pytest.mark.parametrize("huge", [float("inf"), 1e300, 10**30, 2**62 / 1e9])
def test_huge_and_infinite_timeouts_wait_for_ever(huge: float) -> None:
    """A timeout too long for a deadline, infinity included, means "wait for
    ever", for queue-style and socket-style calls alike."""
    assert deadline(True, huge) == FOREVER
    assert channel_deadline(huge) == FOREVER


def test_ordinary_timeouts() -> None:
    """None waits for ever, 0 never waits (socket style) or now (queue
    style), a number is that far ahead on the monotonic clock."""
    assert deadline(False, 5) == NOWAIT and deadline(True, None) == FOREVER
    assert channel_deadline(None) == FOREVER and channel_deadline(0) == NOWAIT
    before = time.monotonic_ns()
    d = channel_deadline(1.5)
    assert before + 1_500_000_000 <= d <= time.monotonic_ns() + 1_500_000_000
    assert deadline(True, 0) >= before  # "now", not NOWAIT's 0


@pytest.mark.parametrize("bad", [-1, -0.001, float("-inf"), float("nan")])
def test_bad_timeouts_are_value_errors(bad: float) -> None:
    """Negative timeouts and NaN raise ValueError."""
    with pytest.raises(ValueError):
        deadline(True, bad)
    with pytest.raises(ValueError):
        channel_deadline(bad)


def test_timeout_of_a_wrong_type_is_a_type_error() -> None:
    """A timeout that is not a number raises TypeError."""
    with pytest.raises(TypeError):
        channel_deadline("1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        deadline(True, b"1")  # type: ignore[arg-type]


def test_check_int() -> None:
    """Integers in range pass, out of range (however large) is ValueError,
    anything not an integer TypeError."""
    assert check_int(5, "x", 0, 10) == 5 and check_int(True, "x", 0, 1) == 1
    assert check_int(10**100, "x", 1) == 10**100
    for bad in (-1, 11, 2**64, -(10**100)):
        with pytest.raises(ValueError, match="x must be between 0 and 10"):
            check_int(bad, "x", 0, 10)
    for wrong in (1.5, "3", None, b"1"):
        with pytest.raises(TypeError, match="x must be an integer"):
            check_int(wrong, "x", 0, 10)


def test_check_mode() -> None:
    """Permission bits are 0 to 0o7777; more, negative or not an int is refused."""
    assert check_mode(0o7777) == 0o7777 and check_mode(0) == 0
    for bad in (0o10000, -1, 2**64):
        with pytest.raises(ValueError, match="0o7777"):
            check_mode(bad)
    with pytest.raises(TypeError):
        check_mode(0o600 + 0.5)


def test_format_size() -> None:
    """Whole KiB and MiB are written as such, the rest in bytes."""
    assert [format_size(s) for s in (64, 1000, 4096, 1 << 20, 1500 * 1024)] == [
        "64 B", "1000 B", "4 KiB", "1 MiB", "1500 KiB"]
