"""Offline speech synthesis with eSpeak NG (the library shipped by ``espeakng-loader``).

Used by the emulator (the assistant's voice), the load tester and the demo (the caller's voice)
and the benchmarks (real speech to measure on). Not on the gateway's live audio path.

eSpeak NG keeps global state, so every call goes through one process-wide lock; synthesis of a
sentence takes a few milliseconds of CPU per second of speech, so async callers should run
:meth:`Synthesizer.synthesize` in a worker thread.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import soxr

ESPEAK_RATE: Final = 22050

_AUDIO_OUTPUT_SYNCHRONOUS: Final = 2
_CHARS_UTF8: Final = 1
_PARAM_RATE: Final = 1
_PARAM_PITCH: Final = 3
_PARAM_RANGE: Final = 4

_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


@dataclass(frozen=True, slots=True)
class VoiceStyle:
    """An eSpeak voice (language+variant) with words per minute and pitch (0-99)."""

    espeak_name: str
    wpm: int = 165
    pitch: int = 50


# Each Realtime voice name maps to an audibly different eSpeak voice.
REALTIME_VOICES: Final[dict[str, VoiceStyle]] = {
    "alloy": VoiceStyle("en-us+f2", 165, 55),
    "ash": VoiceStyle("en-us+m3", 160, 40),
    "ballad": VoiceStyle("en+m1", 150, 45),
    "coral": VoiceStyle("en-us+f3", 170, 62),
    "echo": VoiceStyle("en-us+m1", 165, 35),
    "sage": VoiceStyle("en+f2", 160, 58),
    "shimmer": VoiceStyle("en-us+f4", 175, 70),
    "verse": VoiceStyle("en-gb-x-rp+m4", 155, 50),
    "marin": VoiceStyle("en-us+f1", 165, 60),
    "cedar": VoiceStyle("en-us+m2", 160, 42),
}
CALLER_VOICE: Final = VoiceStyle("en-us+m7", 170, 48)


class Synthesizer:
    """Process-wide eSpeak NG wrapper. Get it with :func:`synthesizer`."""

    def __init__(self) -> None:
        import espeakng_loader

        self._lock = threading.Lock()
        self._lib = ctypes.CDLL(str(espeakng_loader.get_library_path()))
        data_path = str(espeakng_loader.get_data_path()).encode()
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0)
        if rate <= 0:
            raise RuntimeError(f"eSpeak NG failed to initialise (data at {data_path!r})")
        self.sample_rate: int = rate
        self._chunks: list[npt.NDArray[np.int16]] = []
        self._callback = _CALLBACK(self._on_samples)  # keep a reference: ctypes does not
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]

    def _on_samples(self, wav: ctypes._Pointer[ctypes.c_short], n: int, _events: int) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).astype(np.int16))
        return 0

    def synthesize(
        self, text: str, voice: VoiceStyle = CALLER_VOICE, rate: int = ESPEAK_RATE
    ) -> npt.NDArray[np.int16]:
        """Speak ``text`` and return mono PCM16 at ``rate`` Hz (soxr whole-buffer resampling)."""
        raw = text.encode("utf-8") + b"\0"
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.espeak_name.encode()) != 0:
                raise ValueError(f"eSpeak NG has no voice {voice.espeak_name!r}")
            self._lib.espeak_SetParameter(_PARAM_RATE, voice.wpm, 0)
            self._lib.espeak_SetParameter(_PARAM_PITCH, voice.pitch, 0)
            self._lib.espeak_SetParameter(_PARAM_RANGE, 50, 0)
            self._chunks = []
            err = self._lib.espeak_Synth(raw, len(raw), 0, 0, 0, _CHARS_UTF8, None, None)
            self._lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if err != 0:
            raise RuntimeError(f"eSpeak NG could not synthesise {text[:40]!r} (error {err})")
        audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        if rate != self.sample_rate and audio.size:
            audio = resample_buffer(audio, self.sample_rate, rate)
        return audio


def resample_buffer(audio: npt.NDArray[np.int16], src: int, dst: int) -> npt.NDArray[np.int16]:
    """Whole-buffer, high-quality resampling (soxr VHQ). Not for the live path."""
    if src == dst:
        return audio
    out: npt.NDArray[np.float32] = soxr.resample(
        audio.astype(np.float32) / 32768.0, src, dst, quality="VHQ"
    )
    return np.clip(np.round(out * 32768.0), -32768, 32767).astype(np.int16)


_instance: Synthesizer | None = None
_instance_lock = threading.Lock()


def synthesizer() -> Synthesizer:
    """The process-wide synthesizer, created on first use."""
    global _instance
    with _instance_lock:
        if _instance is None:
            _instance = Synthesizer()
        return _instance
