"""Per-call audio transcoding between the carrier (8 kHz μ-law) and the model (24 kHz PCM16).

:class:`CallTranscoder` owns both directions of one call and all of their state, and does no I/O:

* **from the caller** (caller -> model, :meth:`CallTranscoder.from_caller`): μ-law payloads of
  any length become complete 20 ms frames of 24 kHz PCM16 (480 samples). A 160-byte carrier
  frame yields exactly one model frame, from the first frame on; other lengths are held until a
  frame is complete.
* **to the caller** (model -> caller, :meth:`CallTranscoder.to_caller`): 24 kHz PCM16 of any
  length becomes complete 160-byte μ-law frames; the remainder is held. At the end of a response
  :meth:`CallTranscoder.flush_to_caller` pads the remainder with silence; on barge-in
  :meth:`CallTranscoder.reset_to_caller` drops it.
  :meth:`CallTranscoder.to_caller_48k` takes aiortc's decoded 48 kHz audio (mono or interleaved
  stereo) straight to 8 kHz: 2.0 ms instead of 2.54 ms of delay and about half the CPU of going
  through 24 kHz first.

Both directions resample with :class:`~gateway.audio.resample.StreamResampler`, whose output does
not depend on how the input was split.

With a G.711 codec on the Realtime leg (``pcmu``/``pcma``) nothing is resampled or re-encoded:
:meth:`CallTranscoder.from_caller_g711` and :meth:`CallTranscoder.to_caller_g711` only cut the
bytes into 160-byte frames (a 160-byte payload passes as the same object) and, for A-law,
translate each byte by table lookup.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import numpy.typing as npt

from gateway.audio.format import CARRIER_RATE, MODEL_RATE, WEBRTC_RATE, UpstreamCodec
from gateway.audio.g711 import (
    ULAW_SILENCE,
    alaw_to_ulaw,
    array_to_ulaw,
    ulaw_to_alaw,
    ulaw_to_array,
)
from gateway.audio.resample import StreamResampler
from gateway.errors import AudioFormatError

__all__ = ["CallTranscoder"]


class CallTranscoder:
    """Both audio directions of one call. Create one per call; not thread-safe."""

    FRAME_MS: ClassVar[int] = 20
    CARRIER_FRAME_BYTES: ClassVar[int] = CARRIER_RATE * FRAME_MS // 1000  # 160 μ-law bytes
    MODEL_FRAME_SAMPLES: ClassVar[int] = MODEL_RATE * FRAME_MS // 1000  # 480 PCM16 samples

    def __init__(self) -> None:
        self._up = StreamResampler(CARRIER_RATE, MODEL_RATE)
        self._down = StreamResampler(MODEL_RATE, CARRIER_RATE)
        self._down48: StreamResampler | None = None
        # The resampler whose history belongs to the response being sent, for flushing.
        self._active_out: StreamResampler | None = None
        self._in_pending = np.zeros(0, dtype=np.int16)
        self._in_g711_pending = bytearray()
        self._out_pending = bytearray()

    # ------------------------------------------------------------- from the caller

    @property
    def from_caller_delay_ms(self) -> float:
        """Algorithmic delay of the caller -> model resampling."""
        return self._up.delay_ms

    @property
    def pending_from_caller_samples(self) -> int:
        """24 kHz samples held until they complete a 480-sample frame."""
        return int(self._in_pending.size)

    def from_caller(self, ulaw: bytes | bytearray | memoryview) -> list[npt.NDArray[np.int16]]:
        """Decode and upsample a carrier payload; return the 24 kHz frames it completes.

        Every returned array has exactly 480 samples. A 160-byte payload returns one frame
        (unless earlier odd-sized payloads left a remainder, which shifts the framing).
        """
        return self.from_caller_pcm(ulaw_to_array(ulaw))

    def from_caller_pcm(self, pcm8k: npt.NDArray[np.int16]) -> list[npt.NDArray[np.int16]]:
        """Like :meth:`from_caller` for caller audio already decoded to 8 kHz PCM16, so a caller
        frame is decoded once however many parts (VAD, recording, transcoding) look at it."""
        pcm = self._up.process(pcm8k)
        size = self.MODEL_FRAME_SAMPLES
        if self._in_pending.size == 0 and pcm.size == size:
            return [pcm]  # the steady state: one carrier frame, one model frame
        if self._in_pending.size:
            pcm = np.concatenate((self._in_pending, pcm))
        whole = pcm.size - pcm.size % size
        self._in_pending = pcm[whole:].copy()
        return [pcm[i : i + size].copy() for i in range(0, whole, size)]

    def from_caller_g711(
        self, ulaw: bytes | bytearray | memoryview, codec: UpstreamCodec
    ) -> list[bytes]:
        """A carrier payload for a G.711 Realtime leg: 160-byte frames in ``codec`` (``pcmu``:
        the carrier's bytes as they are; ``pcma``: translated). No decoding, no resampling.

        A 160-byte payload with nothing held comes back as the same bytes object.
        """
        if codec == "opus":
            raise ValueError("from_caller_g711 is for pcmu/pcma; Opus takes from_caller_pcm")
        size = self.CARRIER_FRAME_BYTES
        if not self._in_g711_pending and len(ulaw) == size:
            frames = [ulaw if isinstance(ulaw, bytes) else bytes(ulaw)]
        else:
            self._in_g711_pending += ulaw
            whole = len(self._in_g711_pending) - len(self._in_g711_pending) % size
            frames = [bytes(self._in_g711_pending[i : i + size]) for i in range(0, whole, size)]
            del self._in_g711_pending[:whole]
        return frames if codec == "pcmu" else [ulaw_to_alaw(f) for f in frames]

    def reset_from_caller(self) -> None:
        """Drop held caller audio and resampler history (e.g. when the model session is
        replaced); the next payload is transcoded as the start of a new stream."""
        self._up.reset()
        self._in_pending = np.zeros(0, dtype=np.int16)
        self._in_g711_pending.clear()

    # --------------------------------------------------------------- to the caller

    @property
    def to_caller_delay_ms(self) -> float:
        """Algorithmic delay of the 24 kHz model -> caller resampling."""
        return self._down.delay_ms

    @property
    def pending_to_caller_samples(self) -> int:
        """8 kHz samples (= μ-law bytes) held until they complete a 160-byte frame."""
        return len(self._out_pending)

    def to_caller(self, pcm24k: npt.NDArray[np.int16]) -> list[bytes]:
        """Downsample and encode model audio; return the 160-byte μ-law frames it completes.

        ``pcm24k`` is 1-D int16 mono at 24 kHz, any length. Raises
        :class:`~gateway.errors.AudioFormatError` for another dtype or shape. Send the frames
        in order; call :meth:`flush_to_caller` when the response ends, or
        :meth:`reset_to_caller` when it is interrupted.
        """
        return self._emit(self._down, pcm24k)

    def to_caller_48k(self, pcm: npt.NDArray[np.int16], channels: int) -> list[bytes]:
        """Like :meth:`to_caller` for 48 kHz audio, mono or interleaved stereo (``channels=2``).

        This is the shortest path from aiortc's Opus decoder (48 kHz stereo) to the carrier.
        Use one model -> caller path per response: each keeps its own filter history, so switching
        mid-response would drop or repeat up to 2 ms; :meth:`flush_to_caller` and
        :meth:`reset_to_caller` end either one.
        """
        if self._down48 is None or self._down48.channels != channels:
            self._down48 = StreamResampler(WEBRTC_RATE, CARRIER_RATE, channels=channels)
        return self._emit(self._down48, pcm)

    def to_caller_decoded(
        self, pcm: npt.NDArray[np.int16], rate: int, channels: int = 1
    ) -> list[bytes]:
        """Model audio as a WebRTC decoder produced it, to the carrier in one hop: 48 kHz (mono
        or interleaved stereo, Opus) through :meth:`to_caller_48k`, 24 kHz mono through
        :meth:`to_caller`, 8 kHz mono (PCMU/PCMA decoded) with no resampling at all.

        Raises :class:`~gateway.errors.AudioFormatError` for any other rate or layout.
        """
        if rate == WEBRTC_RATE and channels in (1, 2):
            return self.to_caller_48k(pcm, channels)
        if rate == MODEL_RATE and channels == 1:
            return self.to_caller(pcm)
        if rate == CARRIER_RATE and channels == 1:
            return self._emit(None, pcm)
        raise AudioFormatError(
            f"model audio at {rate} Hz with {channels} channel(s): expected 48 kHz, "
            "24 kHz mono or 8 kHz mono"
        )

    def to_caller_g711(self, payload: bytes, codec: UpstreamCodec) -> list[bytes]:
        """Model audio from a G.711 Realtime leg (``pcmu`` as is, ``pcma`` translated) as
        160-byte μ-law frames for the carrier; the remainder is held as for the other paths
        (:meth:`flush_to_caller` pads it, :meth:`reset_to_caller` drops it)."""
        if codec == "opus":
            raise ValueError("to_caller_g711 is for pcmu/pcma; Opus takes to_caller_decoded")
        self._active_out = None  # no filter: nothing rings past the bytes
        return self._frame_out(payload if codec == "pcmu" else alaw_to_ulaw(payload))

    def flush_to_caller(self) -> bytes | None:
        """End the current response: return its last frame, padded with silence, or None.

        The frame holds the held remainder plus what the filter still holds (its last ~2 ms,
        then silence), so the response ends as it would have with silence appended. Returns
        None when nothing is pending. Afterwards the model -> caller state is clean, as after
        :meth:`reset_to_caller`.
        """
        source = self._active_out
        has_tail = source is not None and source.has_tail
        if not self._out_pending and not has_tail:
            self.reset_to_caller()
            return None
        missing = self.CARRIER_FRAME_BYTES - len(self._out_pending)
        if source is not None and has_tail:
            silence = np.zeros(source.input_for_output(missing) * source.channels, np.int16)
            self._out_pending += array_to_ulaw(source.process(silence))
        else:
            self._out_pending += bytes([ULAW_SILENCE]) * missing
        frame = bytes(self._out_pending)
        self.reset_to_caller()  # anything the filter still rings with past the frame is dropped
        return frame

    def reset_to_caller(self) -> None:
        """Barge-in: drop held model audio and the resamplers' history.

        The next response then starts from silence, exactly as on a fresh transcoder, so no
        fragment of the interrupted one can click at its start.
        """
        self._out_pending.clear()
        self._down.reset()
        if self._down48 is not None:
            self._down48.reset()
        self._active_out = None

    def _emit(self, resampler: StreamResampler | None, pcm: npt.NDArray[np.int16]) -> list[bytes]:
        ulaw = array_to_ulaw(pcm if resampler is None else resampler.process(pcm))
        if pcm.size:
            self._active_out = resampler  # None: 8 kHz already, no filter tail to flush
        return self._frame_out(ulaw)

    def _frame_out(self, ulaw: bytes) -> list[bytes]:
        size = self.CARRIER_FRAME_BYTES
        if not self._out_pending and len(ulaw) == size:
            return [ulaw]  # the steady state: one model frame, one carrier frame
        self._out_pending += ulaw
        whole = len(self._out_pending) - len(self._out_pending) % size
        frames = [bytes(self._out_pending[i : i + size]) for i in range(0, whole, size)]
        del self._out_pending[:whole]
        return frames
