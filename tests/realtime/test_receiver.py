"""The short receive buffer: in-sequence audio leaves at once, gaps wait ``depth`` packets, and
the aiortc seam it replaces is checked on a real receiver."""

from __future__ import annotations

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from gateway.realtime.receiver import (
    MAX_DEPTH,
    ReceiverSeamMoved,
    ShortJitterBuffer,
    install_receive_buffer,
)


def packet(seq: int) -> RtpPacket:
    p = RtpPacket(payload_type=0, sequence_number=seq % 65536, timestamp=(160 * seq) % 2**32)
    p._data = bytes([seq % 256]) * 160  # type: ignore[attr-defined]
    return p


def feed(buffer: JitterBuffer, seqs: list[int]) -> list[int | None]:
    """What leaves after each arriving packet: the sequence number of the frame, or None."""
    out: list[int | None] = []
    for seq in seqs:
        _, frame = buffer.add(packet(seq))
        out.append(None if frame is None else frame.timestamp // 160)
    return out


@pytest.mark.parametrize(
    ("depth", "arrivals", "released"),
    [
        # in order: every frame leaves as it arrives, whatever the depth
        (0, [0, 1, 2, 3], [0, 1, 2, 3]),
        (3, [0, 1, 2, 3], [0, 1, 2, 3]),
        # 1 and 2 swapped: depth 2 waits for 1, then carries one frame of backlog
        (2, [0, 2, 1, 3, 4], [0, None, 1, 2, 3]),
        # 1 lost: waited for until 3 later packets arrived (depth 2), then skipped
        (2, [0, 2, 3, 4, 5], [0, None, None, 2, 3]),
        # depth 0: a gap is skipped at once, the late packet dropped
        (0, [0, 2, 1, 3], [0, 2, None, 3]),
        # across the 16-bit sequence wrap
        (1, [65534, 65535, 65536, 65537], [65534, 65535, 65536, 65537]),
    ],
)
def test_frames_leave_in_sequence_at_once_and_gaps_wait_depth_packets(
    depth: int, arrivals: list[int], released: list[int | None]
) -> None:
    got = feed(ShortJitterBuffer(depth), arrivals)
    assert got == [None if r is None else r % (2**32 // 160) for r in released]


def test_aiortcs_buffer_holds_four_frames_which_is_what_this_replaces() -> None:
    # the 80 ms measured in the issue: nothing leaves before the fifth packet
    assert feed(JitterBuffer(capacity=16, prefetch=4), [0, 1, 2, 3, 4, 5]) == [
        None, None, None, None, 0, 1,
    ]  # fmt: skip


def test_skipped_packets_are_counted() -> None:
    buffer = ShortJitterBuffer(1)
    feed(buffer, [0, 3, 4, 5])
    assert buffer.skipped == 2


@pytest.mark.parametrize("depth", [-1, MAX_DEPTH + 1])
def test_a_depth_out_of_range_is_refused(depth: int) -> None:
    with pytest.raises(ValueError, match="receive buffer depth"):
        ShortJitterBuffer(depth)


async def test_installs_on_a_real_aiortc_audio_receiver() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        receiver = pc.addTransceiver("audio", direction="recvonly").receiver
        installed = install_receive_buffer(receiver, 1)
        assert receiver._RTCRtpReceiver__jitter_buffer is installed  # type: ignore[attr-defined]
    finally:
        await pc.close()


def test_a_moved_seam_fails_loudly() -> None:
    class Elsewhere:
        pass

    with pytest.raises(ReceiverSeamMoved, match="moved the seam"):
        install_receive_buffer(Elsewhere(), 1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("arrivals", "tapped"),
    [
        ([0, 1, 2, 3], [0, 1, 2, 3]),
        # a reorder: 1 and 2 leave together when 1 arrives, no standing delay left behind
        ([0, 2, 1, 3], [0, 1, 2, 3]),
        # a loss: skipped after depth (2) later packets, and everything waiting leaves at once
        ([0, 2, 3, 4, 5], [0, 2, 3, 4, 5]),
    ],
)
def test_a_tap_gets_every_releasable_frame_at_once_and_the_decoder_none(
    arrivals: list[int], tapped: list[int]
) -> None:
    got: list[tuple[bytes, int]] = []
    buffer = ShortJitterBuffer(2, tap=lambda data, ts: got.append((data, ts)))
    for seq in arrivals:
        assert buffer.add(packet(seq)) == (False, None)  # aiortc's decoder queue stays empty
    assert [ts // 160 for _, ts in got] == tapped
    assert all(data == bytes([ts // 160 % 256]) * 160 for data, ts in got)
