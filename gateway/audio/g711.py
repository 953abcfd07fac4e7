"""G.711 μ-law <-> 16-bit linear PCM, as pure functions over bytes or numpy arrays.

PCM16 here is always signed 16-bit little-endian mono, the byte layout of the carrier's decoded
audio and of the Realtime API's ``pcm16``. μ-law is the carrier's wire format: one byte per
sample, 8 kHz. The byte ``0xFF`` encodes silence (+0); ``0x7F`` (−0) decodes to silence as well
but is never produced by the encoder.

The work is done by ``audioop`` (``audioop-lts`` on Python 3.13+), which is C and stateless:
decoding a 20 ms frame costs ~0.1 µs, encoding ~0.4 µs. Because every sample is coded on its
own, the output never depends on how the input was split.
"""

from __future__ import annotations

import sys
import warnings
from typing import Final

import numpy as np
import numpy.typing as npt

from gateway.errors import AudioFormatError

with warnings.catch_warnings():
    # 3.11/3.12 warn that audioop goes away in 3.13, where audioop-lts provides the same module.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "ALAW_SILENCE",
    "ULAW_SILENCE",
    "alaw_to_array",
    "alaw_to_ulaw",
    "array_to_ulaw",
    "g711_peak",
    "pcm16_to_ulaw",
    "ulaw_to_alaw",
    "ulaw_to_array",
    "ulaw_to_pcm16",
]

ULAW_SILENCE: Final = 0xFF
"""The μ-law byte for a zero sample; pad frames with it."""

ALAW_SILENCE: Final = 0xD5
"""The A-law byte for a zero sample (+0, even bits inverted as G.711 A-law transmits it)."""

# audioop works in native byte order; the formats we speak are little-endian.
_SWAP: Final = sys.byteorder == "big"

Buffer = bytes | bytearray | memoryview


def ulaw_to_pcm16(data: Buffer) -> bytes:
    """Decode μ-law bytes to PCM16 little-endian (two bytes out per byte in)."""
    pcm: bytes = audioop.ulaw2lin(data, 2)
    return audioop.byteswap(pcm, 2) if _SWAP else pcm


def pcm16_to_ulaw(data: Buffer) -> bytes:
    """Encode PCM16 little-endian to μ-law (one byte out per two bytes in).

    Raises :class:`AudioFormatError` if ``data`` is not a whole number of 16-bit samples; the
    caller should treat the payload as corrupt rather than guess where a byte went missing.
    """
    if len(data) % 2:
        raise AudioFormatError(
            f"PCM16 payload of {len(data)} bytes is not a whole number of 16-bit samples"
        )
    if _SWAP:
        data = audioop.byteswap(data, 2)
    ulaw: bytes = audioop.lin2ulaw(data, 2)
    return ulaw


def ulaw_to_array(data: Buffer) -> npt.NDArray[np.int16]:
    """Decode μ-law bytes to a fresh, writable int16 array (native order, one sample per byte)."""
    pcm: bytes = audioop.ulaw2lin(data, 2)
    return np.frombuffer(bytearray(pcm), dtype=np.int16)


def alaw_to_array(data: Buffer) -> npt.NDArray[np.int16]:
    """Decode A-law bytes to a fresh, writable int16 array (native order)."""
    pcm: bytes = audioop.alaw2lin(data, 2)
    return np.frombuffer(bytearray(pcm), dtype=np.int16)


def array_to_ulaw(samples: npt.NDArray[np.int16]) -> bytes:
    """Encode a 1-D int16 array to μ-law bytes.

    Raises :class:`AudioFormatError` for any other dtype or shape: silently casting float or
    int32 audio would clip or scale it wrongly, so the caller must convert explicitly.
    """
    if samples.dtype != np.int16 or samples.ndim != 1:
        raise AudioFormatError(
            f"expected a 1-D int16 array, got dtype {samples.dtype} with shape {samples.shape}"
        )
    ulaw: bytes = audioop.lin2ulaw(np.ascontiguousarray(samples).tobytes(), 2)
    return ulaw


def _translation(decode: str, encode: str) -> bytes:
    """A 256-byte table taking each code of one G.711 law to the other law's code for the same
    linear value (through 16-bit PCM, as a decode-then-encode would, one lookup per byte)."""
    codes = bytes(range(256))
    linear = getattr(audioop, decode)(codes, 2)
    table: bytes = getattr(audioop, encode)(linear, 2)
    return table


_ULAW_TO_ALAW: Final = _translation("ulaw2lin", "lin2alaw")
_ALAW_TO_ULAW: Final = _translation("alaw2lin", "lin2ulaw")


def ulaw_to_alaw(data: Buffer) -> bytes:
    """μ-law bytes as A-law: a byte-for-byte table lookup (~0.1 µs for a 20 ms frame)."""
    return bytes(data).translate(_ULAW_TO_ALAW)


def alaw_to_ulaw(data: Buffer) -> bytes:
    """A-law bytes as μ-law: a byte-for-byte table lookup."""
    return bytes(data).translate(_ALAW_TO_ULAW)


def g711_peak(data: Buffer, *, alaw: bool = False) -> int:
    """The largest absolute sample value of G.711 bytes (μ-law, or A-law with ``alaw``)."""
    if not data:
        return 0
    pcm = audioop.alaw2lin(data, 2) if alaw else audioop.ulaw2lin(data, 2)
    peak: int = audioop.max(pcm, 2)
    return peak
