"""The mark ledger: what the caller heard, from sends, echoes and clears."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.telephony.ledger import MarkLedger

FRAME = 160  # 20 ms of μ-law


def test_every_frame_is_marked_by_default_and_echoes_confirm_it() -> None:
    ledger = MarkLedger()
    names = [ledger.sent(FRAME, "resp_1") for _ in range(3)]
    assert names == ["gw1", "gw2", "gw3"]
    assert ledger.sent_ms == 60 and ledger.buffered_ms == 60 and ledger.played_ms == 0
    assert ledger.on_mark("gw1") is True
    assert ledger.played_ms == 20 and ledger.buffered_ms == 40
    assert ledger.played_ms_for("resp_1") == 20
    assert ledger.sent_ms_for("resp_1") == 60


def test_an_echo_confirms_every_older_mark() -> None:
    ledger = MarkLedger()
    for _ in range(4):
        ledger.sent(FRAME, "r")
    assert ledger.on_mark("gw3")
    assert ledger.played_ms == 60 and ledger.pending_marks == 1 and ledger.marks_played == 3
    assert ledger.on_mark("gw1") is False  # already confirmed: a duplicate is unknown now
    assert ledger.unknown_marks == 1


def test_clear_means_pending_echoes_were_not_played() -> None:
    ledger = MarkLedger()
    for _ in range(5):
        ledger.sent(FRAME, "r1")
    ledger.on_mark("gw2")
    ledger.on_clear()
    assert ledger.buffered_ms == 0 and ledger.cleared_ms == 60 and ledger.played_ms == 40
    # the carrier echoes the flushed marks at once: they add nothing to what was played
    for name in ("gw3", "gw4", "gw5"):
        assert ledger.on_mark(name) is False
    assert ledger.marks_cleared == 3 and ledger.unknown_marks == 0
    assert ledger.played_ms_for("r1") == 40
    assert ledger.clears == 1


def test_unknown_names_are_counted_and_ignored() -> None:
    ledger = MarkLedger()
    ledger.sent(FRAME, "r")
    assert ledger.on_mark("someone-else") is False
    assert ledger.unknown_marks == 1 and ledger.buffered_ms == 20


def test_coarser_granularity_needs_a_flush_at_the_end_of_a_response() -> None:
    ledger = MarkLedger(mark_every_ms=100)
    names = [ledger.sent(FRAME, "r") for _ in range(7)]
    assert names == [None, None, None, None, "gw1", None, None]
    assert ledger.unmarked_ms == 40
    tail = ledger.flush()
    assert tail == "gw2" and ledger.unmarked_ms == 0 and ledger.flush() is None
    ledger.on_mark("gw2")
    assert ledger.played_ms == 140 and ledger.buffered_ms == 0


def test_a_mark_spanning_two_responses_credits_each() -> None:
    ledger = MarkLedger(mark_every_ms=60)
    assert ledger.sent(FRAME, "a") is None
    assert ledger.sent(FRAME, "b") is None
    name = ledger.sent(FRAME, "b")
    assert name is not None
    ledger.on_mark(name)
    assert ledger.played_ms_for("a") == 20 and ledger.played_ms_for("b") == 40
    assert ledger.played_ms_for("never") == 0


def test_played_ms_for_rounds_down_to_what_was_surely_heard() -> None:
    ledger = MarkLedger()
    ledger.on_mark(ledger.sent(15, None) or "")
    assert ledger.played_ms == 1.875 and ledger.played_ms_for(None) == 1


def test_zero_and_negative_sizes() -> None:
    ledger = MarkLedger()
    assert ledger.sent(0, "r") is None and ledger.marks_sent == 0
    with pytest.raises(ValueError):
        ledger.sent(-1, "r")
    with pytest.raises(ValueError):
        MarkLedger(mark_every_ms=-1)


def test_cleared_names_are_bounded() -> None:
    ledger = MarkLedger(max_cleared_names=2)
    for _ in range(3):
        ledger.sent(FRAME, "r")
    ledger.on_clear()
    assert ledger.on_mark("gw1") is False and ledger.unknown_marks == 1  # forgotten, oldest
    assert ledger.on_mark("gw3") is False and ledger.marks_cleared == 1


# --- properties against a model carrier ---------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(1, 400), st.sampled_from(["r1", "r2", None])),
        st.tuples(st.just("play"), st.integers(1, 5), st.none()),
        st.tuples(st.just("clear"), st.none(), st.none()),
        st.tuples(st.just("flush"), st.none(), st.none()),
        st.tuples(st.just("junk"), st.none(), st.none()),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops, every=st.sampled_from([0.0, 20.0, 50.0, 100.0]))
def test_ledger_agrees_with_a_carrier_that_plays_in_order(
    ops: list[tuple[str, int | None, str | None]], every: float
) -> None:
    """A model carrier queues audio and marks, plays them in order, and flushes on clear."""
    ledger = MarkLedger(mark_every_ms=every)
    queue: deque[tuple[str, object]] = deque()  # ("audio", (rid, n)) | ("mark", name)
    echoes: list[str] = []
    heard: dict[str | None, int] = {}
    played_before = 0.0
    for op, n, rid in ops:
        if op == "send":
            assert n is not None
            queue.append(("audio", (rid, n)))
            name = ledger.sent(n, rid)
            if name is not None:
                queue.append(("mark", name))
        elif op == "flush":
            name = ledger.flush()
            if name is not None:
                queue.append(("mark", name))
        elif op == "play":
            assert n is not None
            for _ in range(min(n, len(queue))):
                kind, item = queue.popleft()
                if kind == "audio":
                    r, size = item  # type: ignore[misc]
                    heard[r] = heard.get(r, 0) + size
                else:
                    echoes.append(str(item))
        elif op == "clear":
            ledger.on_clear()
            echoes.extend(str(item) for kind, item in queue if kind == "mark")
            queue.clear()
        else:
            echoes.append("junk")
        for name in echoes:
            ledger.on_mark(name)
        echoes.clear()
        # invariants
        assert ledger.sent_ms == pytest.approx(
            ledger.played_ms + ledger.cleared_ms + ledger.buffered_ms
        )
        assert ledger.buffered_ms >= 0 and ledger.played_ms >= played_before
        played_before = ledger.played_ms
        for r in ("r1", "r2", None):
            # never claims more than the carrier really played, nor more than was sent
            assert ledger.played_ms_for(r) * 8 <= heard.get(r, 0)
            assert ledger.played_ms_for(r) <= ledger.sent_ms_for(r)
        if op == "clear":
            assert ledger.buffered_ms == 0
    # once everything is marked and the carrier has played it all, the ledger knows it all
    name = ledger.flush()
    if name is not None:
        queue.append(("mark", name))
    while queue:
        kind, item = queue.popleft()
        if kind == "audio":
            r, size = item  # type: ignore[misc]
            heard[r] = heard.get(r, 0) + size
        else:
            ledger.on_mark(str(item))
    assert ledger.buffered_ms == 0
    if not any(op == "clear" for op, _, _ in ops):
        for r in ("r1", "r2", None):
            assert ledger.played_ms_for(r) == heard.get(r, 0) // 8
