"""The audio formats the gateway moves between, defined once.

A phone call is 8 kHz mono; the Realtime API's PCM16 is 24 kHz mono; a decoded WebRTC Opus
frame is 48 kHz. Everything on the live path is cut in 20 ms frames (Twilio's size), so a
frame's sample count at each rate follows from :data:`FRAME_MS`.
"""

from __future__ import annotations

from typing import Final, Literal

import numpy as np
import numpy.typing as npt

FRAME_MS: Final = 20
"""One media frame, in both directions and on both legs."""
CARRIER_RATE: Final = 8000
"""G.711 (μ-law / A-law) on the carrier leg."""
MODEL_RATE: Final = 24000
"""The Realtime API's PCM16 rate."""
WEBRTC_RATE: Final = 48000
"""What aiortc's Opus decoder yields."""


def frame_samples(rate: int, frame_ms: int = FRAME_MS) -> int:
    """Samples in one frame of ``frame_ms`` at ``rate`` (per channel)."""
    return rate * frame_ms // 1000


CARRIER_FRAME_SAMPLES: Final = frame_samples(CARRIER_RATE)
"""160: also the byte length of one 20 ms μ-law frame (one byte a sample)."""
MODEL_FRAME_SAMPLES: Final = frame_samples(MODEL_RATE)
"""480 samples of 24 kHz PCM16."""


UpstreamCodec = Literal["opus", "pcmu", "pcma"]
"""The audio codec on the Realtime leg. ``opus`` transcodes (8 kHz μ-law ⇄ Opus at 48 kHz, through
PCM); ``pcmu`` carries the carrier's μ-law bytes through RTP as they are; ``pcma`` the same bytes
translated to A-law by table lookup. Either G.711 codec skips every resampler of the call."""
UPSTREAM_CODECS: Final[tuple[UpstreamCodec, ...]] = ("opus", "pcmu", "pcma")
RTP_MIME: Final[dict[UpstreamCodec, str]] = {
    "opus": "audio/opus",
    "pcmu": "audio/PCMU",
    "pcma": "audio/PCMA",
}
"""The codec's MIME name in SDP (aiortc's ``mimeType``; compare case-insensitively)."""

LegFrame = npt.NDArray[np.int16] | bytes
"""One 20 ms frame of caller audio on the Realtime leg: 480 int16 samples at 24 kHz (an Opus
leg, which aiortc encodes) or 160 bytes of the leg's G.711 law (sent as they are)."""
