"""DTMF aggregation: keys become entries on the terminator, the length limit or the timeout."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.telephony.dtmf import DTMF_KEYS, DtmfCollector


def test_the_terminator_ends_the_entry_and_is_kept() -> None:
    c = DtmfCollector()
    assert c.press("4", 10.0) is None
    assert c.press("7", 10.3) is None
    assert c.pending == "47"
    assert c.press("#", 10.5) == "47#"
    assert c.pending == "" and c.deadline is None
    assert c.due(100.0) is None


def test_a_lone_terminator_is_an_entry_of_its_own() -> None:
    c = DtmfCollector()
    assert c.press("#", 1.0) == "#"


def test_the_timeout_ends_a_single_key_menu_choice() -> None:
    c = DtmfCollector(inter_digit_timeout_ms=1500)
    assert c.press("1", 20.0) is None
    assert c.deadline == pytest.approx(21.5)
    assert c.due(21.499) is None
    assert c.due(21.5) == "1"  # due exactly at the deadline
    assert c.deadline is None and c.pending == ""
    assert c.due(30.0) is None


def test_each_key_restarts_the_timeout() -> None:
    c = DtmfCollector(inter_digit_timeout_ms=1000)
    c.press("1", 0.0)
    c.press("2", 0.9)
    assert c.deadline == pytest.approx(1.9)
    assert c.due(1.5) is None  # would have fired had the timeout not restarted
    assert c.due(1.9) == "12"


def test_max_digits_ends_the_entry_and_counts_the_terminator() -> None:
    c = DtmfCollector(max_digits=3)
    assert c.press("1", 0.0) is None
    assert c.press("2", 0.1) is None
    assert c.press("3", 0.2) == "123"
    assert c.press("4", 0.3) is None
    assert c.press("5", 0.4) is None
    assert c.press("#", 0.5) == "45#"


def test_max_digits_of_one_makes_every_key_an_entry() -> None:
    c = DtmfCollector(max_digits=1)
    assert [c.press(k, i) for i, k in enumerate("12*")] == ["1", "2", "*"]
    assert c.deadline is None


def test_no_terminator_means_pound_is_an_ordinary_key() -> None:
    c = DtmfCollector(terminator=None, inter_digit_timeout_ms=500)
    assert c.press("#", 0.0) is None
    assert c.press("9", 0.1) is None
    assert c.due(0.6) == "#9"


def test_star_as_terminator() -> None:
    c = DtmfCollector(terminator="*")
    assert c.press("#", 0.0) is None
    assert c.press("*", 0.1) == "#*"


def test_a_key_after_a_missed_timeout_hands_out_the_stale_entry_first() -> None:
    # The timer task had not run yet when the next key arrived: order must still hold.
    c = DtmfCollector(inter_digit_timeout_ms=1000)
    c.press("1", 0.0)
    assert c.press("2", 5.0) == "1"
    assert c.pending == "2"
    assert c.deadline == pytest.approx(6.0)
    assert c.due(6.0) == "2"


def test_a_terminator_after_a_missed_timeout_completes_both_in_order() -> None:
    c = DtmfCollector(inter_digit_timeout_ms=1000)
    c.press("1", 0.0)
    assert c.press("#", 5.0) == "1"
    # the "#" entry is complete already: the deadline is now, so the timer wakes at once
    assert c.deadline == pytest.approx(5.0)
    assert c.due(5.0) == "#"
    assert c.due(5.0) is None and c.deadline is None


def test_due_hands_out_one_entry_per_call() -> None:
    c = DtmfCollector(inter_digit_timeout_ms=1000, max_digits=2)
    c.press("1", 0.0)
    c.press("2", 0.1)  # complete, returned at once
    c.press("3", 0.2)
    assert c.due(10.0) == "3"
    assert c.due(10.0) is None


def test_flush_returns_a_complete_entry_not_yet_handed_out() -> None:
    c = DtmfCollector(inter_digit_timeout_ms=1000)
    c.press("1", 0.0)
    assert c.press("#", 5.0) == "1"  # leaves "#" complete, waiting for the timer
    assert c.flush() == ["#"]
    assert c.flush() == [] and c.deadline is None


def test_flush_returns_the_unfinished_entry_and_forgets_it() -> None:
    c = DtmfCollector()
    c.press("1", 0.0)
    c.press("2", 0.1)
    assert c.flush() == ["12"]
    assert c.flush() == [] and c.pending == "" and c.deadline is None
    assert c.due(100.0) is None


def test_flush_on_a_fresh_collector_is_empty() -> None:
    assert DtmfCollector().flush() == []


@pytest.mark.parametrize("bad", ["", "E", "a", "11", " ", "٣", "#1"])
def test_invalid_keys_are_refused_with_a_clear_message(bad: str) -> None:
    c = DtmfCollector()
    c.press("5", 0.0)
    with pytest.raises(ValueError, match=r"not a DTMF key: expected one of 0-9, \*, #, A-D"):
        c.press(bad, 0.1)
    assert c.pending == "5"  # a refused key changes nothing
    assert c.deadline == pytest.approx(1.5)


def test_every_dtmf_key_is_accepted() -> None:
    c = DtmfCollector(terminator=None, max_digits=16)
    keys = "0123456789*#ABCD"
    assert set(keys) == DTMF_KEYS
    out = [c.press(k, 0.0) for k in keys]
    assert out == [None] * 15 + [keys]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"inter_digit_timeout_ms": 0},
        {"inter_digit_timeout_ms": -5},
        {"inter_digit_timeout_ms": math.nan},
        {"max_digits": 0},
        {"terminator": "x"},
        {"terminator": ""},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DtmfCollector(**kwargs)  # type: ignore[arg-type]


_presses = st.lists(
    st.tuples(st.sampled_from(sorted(DTMF_KEYS)), st.floats(0.0, 3.0), st.booleans()),
    max_size=40,
)


@given(_presses, st.integers(1, 6), st.sampled_from(["#", "*", None]))
def test_no_key_is_lost_or_reordered(
    presses: list[tuple[str, float, bool]], max_digits: int, terminator: str | None
) -> None:
    """Whatever the timing, and whether or not the timer task ran before the next key, the
    entries handed out concatenate to exactly the keys pressed, in order, and each entry obeys
    the limits."""
    c = DtmfCollector(inter_digit_timeout_ms=1000, max_digits=max_digits, terminator=terminator)
    entries: list[str] = []
    now = 0.0
    typed = ""
    for key, gap, timer_ran in presses:
        now += gap
        # the timer task wakes at the deadline, unless the key arrives before it gets to run
        while timer_ran and (deadline := c.deadline) is not None and deadline <= now:
            entry = c.due(deadline)
            assert entry is not None, "deadline promised an entry"
            entries.append(entry)
        entry = c.press(key, now)
        typed += key
        if entry is not None:
            entries.append(entry)
    entries += c.flush()
    assert "".join(entries) == typed
    for entry in entries:
        assert 1 <= len(entry) <= max_digits
        if terminator is not None:
            assert terminator not in entry[:-1]
