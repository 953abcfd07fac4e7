"""Admission control and the webhook -> stream binding."""

from __future__ import annotations

import pytest

from gateway.admission import Admissions, Replayed
from gateway.errors import CapacityError, Forbidden


def test_admit_bind_release_cycle() -> None:
    a = Admissions(max_calls=2)
    adm = a.admit("CA1", "+15550001", "+15559999", now=0.0)
    assert a.load(0.0) == 1
    assert a.bind("CA1", adm.token, now=1.0).called == "+15550001"
    assert a.live == 1 and a.load(1.0) == 1
    a.release("CA1")
    a.release("CA1")
    assert a.load(2.0) == 0


def test_capacity_counts_pending_and_live() -> None:
    a = Admissions(max_calls=2)
    t1 = a.admit("CA1", None, None, 0.0).token
    a.admit("CA2", None, None, 0.0)
    a.bind("CA1", t1, 0.0)
    with pytest.raises(CapacityError, match="capacity"):
        a.admit("CA3", None, None, 0.0)
    assert not a.has_room(0.0)


def test_webhook_retry_returns_the_same_token() -> None:
    a = Admissions(max_calls=1)
    assert a.admit("CA1", None, None, 0.0) == a.admit("CA1", None, None, 1.0)


def test_wrong_unknown_or_expired_bindings_are_forbidden() -> None:
    a = Admissions(max_calls=5, token_ttl_s=10)
    adm = a.admit("CA1", "+1555", None, 0.0)
    with pytest.raises(Forbidden, match="no valid call token"):
        a.bind("CA1", "x" + adm.token, 1.0)
    with pytest.raises(Forbidden, match="wrong call token"):
        a.bind("CA1", adm.token[:-2] + "AA", 1.0)
    with pytest.raises(Forbidden, match="wrong call token"):
        a.bind("CA9", adm.token, 1.0)  # another call's token
    with pytest.raises(Forbidden, match="expired"):
        a.bind("CA1", adm.token, 10.0)  # expired: slot freed too
    assert a.load(10.0) == 0


def test_a_token_from_another_replica_binds_with_the_shared_secret() -> None:
    admitting = Admissions(max_calls=5, secret=b"k" * 32)
    other = Admissions(max_calls=1, secret=b"k" * 32)
    stranger = Admissions(max_calls=5, secret=b"z" * 32)
    adm = admitting.admit("CA1", "+1555", None, 100.0)
    with pytest.raises(Forbidden, match="wrong call token"):
        stranger.bind("CA1", adm.token, 101.0, called="+1555")
    with pytest.raises(Forbidden, match="wrong call token"):
        other.bind("CA1", adm.token, 101.0, called="+1666")  # the number is signed too
    assert other.bind("CA1", adm.token, 101.0, called="+1555").called == "+1555"
    assert other.live == 1
    # a second call admitted elsewhere finds this replica full
    adm2 = admitting.admit("CA2", None, None, 100.0)
    with pytest.raises(CapacityError):
        other.bind("CA2", adm2.token, 101.0)


def test_a_token_binds_once() -> None:
    a = Admissions(max_calls=5)
    adm = a.admit("CA1", None, None, 0.0)
    a.bind("CA1", adm.token, 0.0)
    with pytest.raises(Forbidden):
        a.bind("CA1", adm.token, 0.0)


def test_draining_refuses_new_calls() -> None:
    a = Admissions(max_calls=5)
    a.draining = True
    with pytest.raises(CapacityError, match="draining"):
        a.admit("CA1", None, None, 0.0)


def test_setup_rate_is_a_token_bucket() -> None:
    a = Admissions(max_calls=100, max_setup_rate=2.0)
    a.admit("CA1", None, None, 0.0)
    a.admit("CA2", None, None, 0.0)  # a burst of two is allowed
    assert not a.has_room(0.0)
    with pytest.raises(CapacityError, match="setup rate"):
        a.admit("CA3", None, None, 0.1)
    # 0.5 s later one more token has accumulated
    assert a.has_room(0.5)
    a.admit("CA3", None, None, 0.5)
    with pytest.raises(CapacityError):
        a.admit("CA4", None, None, 0.6)
    # a webhook retry of an admitted call is not a new setup
    assert a.admit("CA3", None, None, 0.6).call_sid == "CA3"


def test_over_the_rate_a_call_waits_its_turn_within_the_queue() -> None:
    a = Admissions(max_calls=100, max_setup_rate=2.0, setup_queue_s=1.0, token_ttl_s=60)
    turns = [a.admit(f"CA{i}", None, None, 10.0).answer_at for i in range(4)]
    assert turns == [10.0, 10.0, 10.5, 11.0]  # a burst of two, then one every 0.5 s
    with pytest.raises(CapacityError, match=r"2 per second and 1 s of queue"):
        a.admit("CA4", None, None, 10.0)  # its turn (11.5) is past the queue
    assert not a.has_room(10.0) and a.has_room(10.5)
    # the token's life starts at the answer, not at the admission
    assert a.admit("CA3", None, None, 10.2).expires_at == 11.0 + 60
    # turns are booked in arrival order: a later arrival never overtakes
    assert a.admit("CA5", None, None, 10.6).answer_at == 11.5


def test_a_queued_setup_turn_frees_up_as_time_passes() -> None:
    a = Admissions(max_calls=100, max_setup_rate=1.0, setup_queue_s=0.0)
    assert a.admit("CA1", None, None, 0.0).answer_at == 0.0
    with pytest.raises(CapacityError):
        a.admit("CA2", None, None, 0.5)
    assert a.admit("CA2", None, None, 1.0).answer_at == 1.0


def test_no_setup_rate_means_no_limit() -> None:
    a = Admissions(max_calls=1000)
    for i in range(500):
        a.admit(f"CA{i}", None, None, 0.0)
    assert a.load(0.0) == 500


def test_an_admitted_call_sid_is_never_admitted_again_within_the_window() -> None:
    a = Admissions(max_calls=5, token_ttl_s=60, replay_window_s=3600)
    adm = a.admit("CA1", None, None, 0.0)
    assert a.admit("CA1", None, None, 30.0) == adm  # a retry while pending: same slot
    with pytest.raises(Replayed):
        a.admit("CA1", None, None, 61.0)  # the token expired: not a fresh call
    a.bind("CA2", a.admit("CA2", None, None, 100.0).token, 101.0)
    with pytest.raises(Replayed):
        a.admit("CA2", None, None, 102.0)  # live: no second token, no second slot
    assert a.load(102.0) == 1
    a.release("CA2")
    with pytest.raises(Replayed):
        a.admit("CA2", None, None, 3000.0)
    assert a.admit("CA1", None, None, 3601.0).call_sid == "CA1"  # past the window


def test_the_replay_memory_is_bounded_oldest_first() -> None:
    a = Admissions(max_calls=10, max_remembered=2)
    for i, sid in enumerate(("CA1", "CA2", "CA3")):
        a.release(a.bind(sid, a.admit(sid, None, None, float(i)).token, float(i)).call_sid)
    for sid in ("CA2", "CA3"):
        with pytest.raises(Replayed):
            a.admit(sid, None, None, 100.0)
    assert a.admit("CA1", None, None, 100.0).call_sid == "CA1"  # forgotten: the oldest


def test_a_call_bound_here_but_admitted_elsewhere_is_remembered() -> None:
    admitting = Admissions(max_calls=5, secret=b"k" * 32)
    other = Admissions(max_calls=5, secret=b"k" * 32)
    other.bind("CA1", admitting.admit("CA1", None, None, 0.0).token, 1.0)
    with pytest.raises(Replayed):
        other.admit("CA1", None, None, 2.0)


def test_workers_sharing_a_port_take_the_slot_where_the_stream_binds() -> None:
    key = b"k" * 32
    webhook_worker = Admissions(max_calls=1, secret=key, hold_pending=False)
    stream_worker = Admissions(max_calls=1, secret=key, hold_pending=False)
    first = webhook_worker.admit("CA1", "+1555", None, 0.0)
    # The webhook reserved nothing: its worker still has room for the next webhook.
    assert webhook_worker.load(0.0) == 0 and webhook_worker.has_room(0.0)
    second = webhook_worker.admit("CA2", "+1555", None, 0.0)
    stream_worker.bind("CA1", first.token, 1.0, "+1555")
    assert stream_worker.live == 1 and not stream_worker.has_room(1.0)
    # The slot is counted where the stream bound: a second stream there finds it full ...
    with pytest.raises(CapacityError, match="capacity"):
        stream_worker.bind("CA2", second.token, 1.0, "+1555")
    # ... and one binding on the webhook's own worker must find room there too.
    webhook_worker.bind("CA2", second.token, 1.0)
    with pytest.raises(CapacityError, match="capacity"):
        webhook_worker.admit("CA3", "+1555", None, 1.0)


def test_sibling_workers_bind_tokens_minted_before_the_drain() -> None:
    key = b"k" * 32
    webhook_worker = Admissions(max_calls=2, secret=key, hold_pending=False)
    stream_worker = Admissions(max_calls=2, secret=key, hold_pending=False)
    adm = webhook_worker.admit("CA1", "+1555", None, 0.0)
    webhook_worker.draining = stream_worker.draining = True
    assert stream_worker.bind("CA1", adm.token, 1.0, "+1555").call_sid == "CA1"
    with pytest.raises(CapacityError, match="draining"):
        webhook_worker.admit("CA2", "+1555", None, 1.0)
