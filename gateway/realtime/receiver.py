"""A short receive buffer for audio, installed at one seam of aiortc's receiver.

aiortc gives every audio receiver a ``JitterBuffer(capacity=16, prefetch=4)``: a frame leaves
only once four later frames have arrived, so model audio waits 80 ms in the gateway before it is
even decoded — on loopback, and on a clean network path, for nothing. :class:`ShortJitterBuffer`
keeps aiortc's packet bookkeeping (the same ring, the same misorder and overflow rules) and
changes one decision: a frame that is next in sequence leaves at once; only a *gap* is waited
for, until ``depth`` later packets have arrived, and then skipped (the decoder's loss concealment
covers it, as it covers a real loss).

So ``depth`` is the reorder tolerance, in 20 ms packets: 0 releases everything in arrival order
and drops a late packet; 2–3 absorb the reordering of a real internet path at a cost paid only
when a packet is missing. Audio codecs send one packet per frame (Opus, PCMU, PCMA), which is
what makes "next in sequence" a whole frame.

A reordered packet that arrives after its successors leaves one frame of standing delay behind
(one frame leaves per arriving packet, as in aiortc); the next skipped gap removes it.

With a ``tap`` (a G.711 leg, whose payload needs no decoder), every releasable frame goes to the
tap at once, in order, on the event loop, and aiortc's decoder thread is never handed one: no
decode, no hop to a thread and back per frame, and no standing delay after a reorder.

The seam is aiortc's private attribute ``RTCRtpReceiver.__jitter_buffer`` (name-mangled). It is
checked, not assumed: :func:`install_receive_buffer` raises :class:`ReceiverSeamMoved` when an
aiortc release moves it, and ``pyproject.toml`` pins aiortc's major version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

from gateway.realtime.config import MAX_RECEIVE_DEPTH

__all__ = ["MAX_DEPTH", "ReceiverSeamMoved", "ShortJitterBuffer", "install_receive_buffer"]

_SEAM: Final = "_RTCRtpReceiver__jitter_buffer"
_CAPACITY: Final = 16  # aiortc's audio ring (packets); a power of two
MAX_DEPTH: Final = MAX_RECEIVE_DEPTH


class ReceiverSeamMoved(RuntimeError):
    """The installed aiortc no longer keeps its audio jitter buffer where this module puts ours."""


class ShortJitterBuffer(JitterBuffer):
    """aiortc's audio jitter buffer, releasing in-sequence frames at once (see the module)."""

    def __init__(self, depth: int, tap: Callable[[bytes, int], None] | None = None) -> None:
        if not 0 <= depth <= MAX_DEPTH:
            raise ValueError(f"receive buffer depth {depth} must be 0..{MAX_DEPTH} packets")
        super().__init__(capacity=_CAPACITY, prefetch=depth)
        self.depth = depth
        self._tap = tap
        """Called with ``(payload, rtp_timestamp)`` for each released frame, instead of aiortc's
        decoder, when set."""
        self.released = 0
        """Frames handed on to the decoder."""
        self.skipped = 0
        """Packets given up on (lost, or later than ``depth`` successors)."""

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        tap = self._tap
        if tap is None:
            return self._next_frame()
        while (frame := self._next_frame()) is not None:
            tap(frame.data, frame.timestamp)
        return None

    def _next_frame(self) -> JitterFrame | None:
        origin = self._origin
        assert origin is not None  # add() sets it before asking for a frame
        ring, capacity = self._packets, self._capacity
        head = ring[origin % capacity]
        if head is None:
            waiting = [i for i in range(1, capacity) if ring[(origin + i) % capacity] is not None]
            if not waiting or len(waiting) <= self.depth:
                return None  # the gap may still be filled
            self.skipped += waiting[0]
            self.remove(waiting[0])
            head = ring[self._origin % capacity]  # type: ignore[operator]
            assert head is not None
        self.remove(1)
        self.released += 1
        return _frame(head)


def _frame(packet: RtpPacket) -> JitterFrame:
    return JitterFrame(data=packet._data, timestamp=packet.timestamp)  # type: ignore[attr-defined]


def install_receive_buffer(
    receiver: RTCRtpReceiver, depth: int, tap: Callable[[bytes, int], None] | None = None
) -> ShortJitterBuffer:
    """Give an audio ``receiver`` a :class:`ShortJitterBuffer` of ``depth`` packets (with
    ``tap``: frames go there instead of to aiortc's decoder; see the module).

    Call it before media flows (right after creating the transceiver or on ``track``). Raises
    :class:`ReceiverSeamMoved` if this aiortc does not have the attribute we replace, or has
    something else in it, rather than silently keeping aiortc's 80 ms.
    """
    current = getattr(receiver, _SEAM, None)
    if not isinstance(current, JitterBuffer) or current.capacity != _CAPACITY:
        raise ReceiverSeamMoved(
            f"aiortc's RTCRtpReceiver has no audio JitterBuffer(capacity={_CAPACITY}) at "
            f"{_SEAM}: this aiortc release moved the seam gateway.realtime.receiver uses; "
            "pin aiortc to a tested version or update the seam"
        )
    buffer = ShortJitterBuffer(depth, tap)
    setattr(receiver, _SEAM, buffer)
    return buffer
