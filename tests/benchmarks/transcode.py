"""Benchmark the live-path transcoding against soxr's streaming resampler and naive interpolation.

Run from the repository root::

    .venv/bin/python tests/benchmarks/transcode.py          # human table
    .venv/bin/python tests/benchmarks/transcode.py --json   # one JSON object, for CI / regressions

Material: real synthesized speech (eSpeak NG), five sentences in each of three voices, made at
8 kHz for the caller side and at 24 kHz for the model side. Everything is fed in 20 ms chunks,
as on a call. Implementations:

* ``gateway``: :class:`~gateway.audio.transcoder.CallTranscoder` (streaming polyphase FIR);
* ``soxr_hq``: ``soxr.ResampleStream(..., quality="HQ")``, one per direction;
* ``naive_interp``: per-frame ``numpy.interp`` over ``linspace(0, n_in - 1, n_out)``, the form
  commonly written by hand (no anti-alias filter, each frame mapped end to end).

Figures (keys of the JSON entries):

* ``inbound_us`` / ``outbound_us``: CPU µs per 20 ms frame, μ-law decode + 8 -> 24 kHz and
  24 -> 8 kHz + μ-law encode (best of three passes over the material);
* ``inbound_delay_ms`` / ``outbound_delay_ms``: algorithmic delay as a caller would hear it: the
  content lag of the output against a zero-delay reference (soxr VHQ on the whole buffer), found
  by cross-correlation, plus the longest time output was withheld beyond its 20 ms frame (a
  player that never underruns must start that much later). soxr withholds; the others do not;
* ``roundtrip_snr_db``: 8 -> 24 -> 8 kHz resampling only (no μ-law), of the speech band-limited
  below 3.4 kHz (Kaiser FIR: pass 3.2 kHz, stop 3.4 kHz, 100 dB), after aligning on the best
  (fractional) lag;
* ``pesq``: ITU-T P.862 narrow band (``pesq`` package, 8 kHz), mean over the utterances, of the
  full phone path: μ-law -> inbound -> 24 kHz -> outbound -> μ-law, against the original.

The human table adds the μ-law-only PESQ ceiling, an outbound-only PESQ (24 kHz model speech to
the caller) and, for the gateway, the two ways from aiortc's 48 kHz stereo to 8 kHz.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soxr
from pesq import pesq

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, no install

from gateway.audio.g711 import array_to_ulaw, ulaw_to_array
from gateway.audio.resample import StreamResampler
from gateway.audio.transcoder import CallTranscoder
from gateway.audio.tts import (
    CALLER_VOICE,
    REALTIME_VOICES,
    VoiceStyle,
    resample_buffer,
    synthesizer,
)

Int16Array = npt.NDArray[np.int16]
FloatArray = npt.NDArray[np.float64]
Stream = Callable[[Int16Array], Int16Array]  # stateful: a chunk in, whatever is ready out

SENTENCES = [
    "Hello, thanks for calling. How can I help you today?",
    "I would like to book a table for four people at seven thirty tonight.",
    "Could you spell the last name for me, please?",
    "Your confirmation number is four, nine, two, seven, one.",
    "Is there anything else I can help you with before you go?",
]
VOICES: list[VoiceStyle] = [CALLER_VOICE, REALTIME_VOICES["alloy"], REALTIME_VOICES["echo"]]
IMPLEMENTATIONS = ("gateway", "soxr_hq", "naive_interp")


# ----------------------------------------------------------------------------- the contenders


def soxr_stream(in_rate: int, out_rate: int) -> Stream:
    rs = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality="HQ")
    return lambda x: np.asarray(rs.resample_chunk(x), dtype=np.int16)


def naive_stream(in_rate: int, out_rate: int) -> Stream:
    cache: dict[int, tuple[FloatArray, FloatArray]] = {}

    def run(x: Int16Array) -> Int16Array:
        if x.size not in cache:  # precomputed grids: naive, not wasteful
            n_out = round(x.size * out_rate / in_rate)
            cache[x.size] = (np.linspace(0, x.size - 1, n_out), np.arange(x.size, dtype=float))
        grid, xp = cache[x.size]
        return np.rint(np.interp(grid, xp, x)).astype(np.int16)

    return run


def gateway_stream(in_rate: int, out_rate: int) -> Stream:
    return StreamResampler(in_rate, out_rate).process


STREAMS: dict[str, Callable[[int, int], Stream]] = {
    "gateway": gateway_stream,
    "soxr_hq": soxr_stream,
    "naive_interp": naive_stream,
}


@dataclass
class PhonePath:
    """What the bridge calls per frame: μ-law bytes <-> 24 kHz PCM16."""

    inbound: Callable[[bytes], Int16Array]
    outbound: Callable[[Int16Array], bytes]
    finish: Callable[[], bytes]  # whatever the outbound side still holds at the end


def phone_path(name: str) -> PhonePath:
    if name == "gateway":
        t = CallTranscoder()

        def inbound(ulaw: bytes) -> Int16Array:
            frames = t.from_caller(ulaw)
            return (
                frames[0] if len(frames) == 1 else np.concatenate([np.zeros(0, np.int16), *frames])
            )

        def finish() -> bytes:
            return t.flush_to_caller() or b""

        return PhonePath(inbound, lambda pcm: b"".join(t.to_caller(pcm)), finish)
    up, down = STREAMS[name](8000, 24000), STREAMS[name](24000, 8000)
    return PhonePath(
        lambda ulaw: up(ulaw_to_array(ulaw)),
        lambda pcm: array_to_ulaw(down(pcm)),
        lambda: b"",
    )


# ------------------------------------------------------------------------------ measurements


def chunks(x: Int16Array, size: int) -> list[Int16Array]:
    return [x[i : i + size] for i in range(0, x.size - size + 1, size)]


def stream_through(stream: Stream, x: Int16Array, frame: int) -> tuple[Int16Array, list[int]]:
    """Output of feeding ``x`` in ``frame``-sample chunks, and the output count per chunk."""
    outs = [stream(c) for c in chunks(x, frame)]
    return np.concatenate([np.zeros(0, np.int16), *outs]), [o.size for o in outs]


def withheld_samples(counts: list[int], frame_out: int) -> int:
    """Longest lag of emitted output behind a frame-synchronous player, in output samples."""
    emitted, worst = 0, 0
    for k, n in enumerate(counts):
        if n:
            worst = max(worst, k * frame_out - emitted)
        emitted += n
    return worst


def xcorr_lag(ref: FloatArray, out: FloatArray, max_lag: int) -> float:
    """Lag (output behind reference, in samples) maximising cross-correlation; parabolic peak."""
    n = 1 << math.ceil(math.log2(ref.size + out.size))
    c = np.fft.irfft(np.fft.rfft(out, n) * np.conj(np.fft.rfft(ref, n)), n)[: max_lag + 1]
    k = int(np.argmax(c))
    if 0 < k < max_lag:
        a, b, d = c[k - 1], c[k], c[k + 1]
        denom = a - 2 * b + d
        return k + (0.5 * (a - d) / denom if denom else 0.0)
    return float(k)


def fractional_shift(x: FloatArray, lag: float) -> FloatArray:
    """``x`` delayed by ``lag`` samples (band-limited, via the FFT; x is zero-padded)."""
    pad = 1 << math.ceil(math.log2(x.size + 2 * abs(lag) + 64))
    spectrum = np.fft.rfft(x, pad)
    freqs = np.fft.rfftfreq(pad)
    return np.fft.irfft(spectrum * np.exp(-2j * np.pi * freqs * lag), pad)[: x.size]


def aligned_snr_db(ref: FloatArray, out: FloatArray, max_lag: int) -> tuple[float, float]:
    """SNR of ``out`` against ``ref`` at the best fractional lag; (snr, lag)."""
    coarse = xcorr_lag(ref, out, max_lag)
    best = (-math.inf, coarse)
    for lag in np.linspace(coarse - 0.5, coarse + 0.5, 21):
        shifted = fractional_shift(ref, float(lag))
        n = min(out.size, shifted.size)
        lo = math.ceil(lag) + 1
        err = out[lo:n] - shifted[lo:n]
        snr = 10 * math.log10(np.sum(shifted[lo:n] ** 2) / max(float(np.sum(err**2)), 1e-12))
        best = max(best, (snr, float(lag)))
    return best


def kaiser_lowpass(x: Int16Array, rate: int, pass_hz: float, stop_hz: float) -> Int16Array:
    atten = 100.0
    width = 2 * math.pi * (stop_hz - pass_hz) / rate
    taps = math.ceil((atten - 7.95) / (2.285 * width)) | 1
    fc = (pass_hz + stop_hz) / 2 / rate
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * fc * np.sinc(2 * fc * n) * np.kaiser(taps, 0.1102 * (atten - 8.7))
    y = np.convolve(x.astype(np.float64), h)[(taps - 1) // 2 : (taps - 1) // 2 + x.size]
    return np.clip(np.rint(y), -32768, 32767).astype(np.int16)


def cpu_us_per_frame(run: Callable[[], int], repeat: int = 3) -> float:
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        frames = run()
        best = min(best, (time.perf_counter() - start) / frames)
    return best * 1e6


def delay_ms(name: str, x: Int16Array, in_rate: int, out_rate: int) -> float:
    out, counts = stream_through(STREAMS[name](in_rate, out_rate), x, in_rate // 50)
    ref = resample_buffer(x, in_rate, out_rate).astype(np.float64)
    lag = xcorr_lag(ref, out.astype(np.float64), out_rate // 4)
    held = withheld_samples(counts, out_rate // 50)
    return 1000 * (lag + held) / out_rate


def roundtrip_snr(name: str, x: Int16Array) -> float:
    wide, _ = stream_through(STREAMS[name](8000, 24000), x, 160)
    back, _ = stream_through(STREAMS[name](24000, 8000), wide, 480)
    snr, _ = aligned_snr_db(x.astype(np.float64), back.astype(np.float64), 4000)
    return snr


def aligned_pesq(ref: Int16Array, deg: Int16Array) -> float:
    lag = round(xcorr_lag(ref.astype(np.float64), deg.astype(np.float64), 4000))
    deg = deg[lag:]
    n = min(ref.size, deg.size)
    return float(pesq(8000, ref[:n].astype(np.float32), deg[:n].astype(np.float32), "nb"))


def phone_round_trip(name: str, x: Int16Array) -> Int16Array:
    path = phone_path(name)
    pending = np.zeros(0, np.int16)
    out = []
    for frame in chunks(x, 160):
        pending = np.concatenate((pending, path.inbound(array_to_ulaw(frame))))
        while pending.size >= 480:  # the model side works in 20 ms frames
            out.append(path.outbound(pending[:480]))
            pending = pending[480:]
    out.append(path.finish())
    return ulaw_to_array(b"".join(out))


def outbound_only(name: str, x24: Int16Array) -> Int16Array:
    path = phone_path(name)
    ulaw = b"".join(path.outbound(f) for f in chunks(x24, 480)) + path.finish()
    return ulaw_to_array(ulaw)


# ----------------------------------------------------------------------------------- driver


@dataclass
class Material:
    utterances_8k: list[Int16Array]
    utterances_24k: list[Int16Array]
    speech_8k: Int16Array  # all utterances with 300 ms gaps
    speech_24k: Int16Array
    bandlimited_8k: Int16Array


def make_material() -> Material:
    tts = synthesizer()
    u8: list[Int16Array] = []
    u24: list[Int16Array] = []
    for voice in VOICES:
        for text in SENTENCES:
            # one synthesis per utterance, resampled, so both rates carry the same speech
            native = tts.synthesize(text, voice, tts.sample_rate)
            u8.append(resample_buffer(native, tts.sample_rate, 8000))
            u24.append(resample_buffer(native, tts.sample_rate, 24000))

    def join(parts: list[Int16Array], rate: int) -> Int16Array:
        gap = np.zeros(rate * 3 // 10, np.int16)
        return np.concatenate([p for u in parts for p in (u, gap)])

    s8 = join(u8, 8000)
    return Material(u8, u24, s8, join(u24, 24000), kaiser_lowpass(s8, 8000, 3200, 3400))


def measure(name: str, m: Material) -> dict[str, float]:
    ulaw_frames = [array_to_ulaw(f) for f in chunks(m.speech_8k, 160)]
    pcm_frames = chunks(m.speech_24k, 480)

    def inbound() -> int:
        path = phone_path(name)
        for f in ulaw_frames:
            path.inbound(f)
        return len(ulaw_frames)

    def outbound() -> int:
        path = phone_path(name)
        for f in pcm_frames:
            path.outbound(f)
        return len(pcm_frames)

    pesqs = [aligned_pesq(u, phone_round_trip(name, u)) for u in m.utterances_8k]
    return {
        "inbound_us": cpu_us_per_frame(inbound),
        "outbound_us": cpu_us_per_frame(outbound),
        "inbound_delay_ms": delay_ms(name, m.speech_8k, 8000, 24000),
        "outbound_delay_ms": delay_ms(name, m.speech_24k, 24000, 8000),
        "roundtrip_snr_db": roundtrip_snr(name, m.bandlimited_8k),
        "pesq": float(np.mean(pesqs)),
    }


def extras(m: Material) -> dict[str, float]:
    """Human-table figures: PESQ ceilings and outbound-only PESQ, the 48 kHz paths."""
    out: dict[str, float] = {}
    out["pesq_mulaw_only"] = float(
        np.mean([aligned_pesq(u, ulaw_to_array(array_to_ulaw(u))) for u in m.utterances_8k])
    )
    for name in IMPLEMENTATIONS:
        scores = []
        for u24 in m.utterances_24k:
            ref = ulaw_to_array(array_to_ulaw(resample_buffer(u24, 24000, 8000)))
            scores.append(aligned_pesq(ref, outbound_only(name, u24)))
        out[f"pesq_outbound_{name}"] = float(np.mean(scores))
    # 48 kHz stereo as aiortc's Opus decoder delivers it: the model speech on both channels
    stereo = np.stack([resample_buffer(m.speech_24k, 24000, 48000)] * 2, axis=1).reshape(-1)
    frames = chunks(stereo, 1920)

    def direct() -> int:
        t = CallTranscoder()
        for f in frames:
            t.to_caller_48k(f, 2)
        return len(frames)

    def chained() -> int:
        t, to24 = CallTranscoder(), StreamResampler(48000, 24000, channels=2)
        for f in frames:
            t.to_caller(to24.process(f))
        return len(frames)

    out["us_48k_direct"] = cpu_us_per_frame(direct)
    out["us_48k_chained"] = cpu_us_per_frame(chained)
    out["delay_48k_direct"] = StreamResampler(48000, 8000, channels=2).delay_ms
    out["delay_48k_chained"] = (
        StreamResampler(48000, 24000, channels=2).delay_ms + StreamResampler(24000, 8000).delay_ms
    )
    return out


def print_table(results: dict[str, dict[str, float]], more: dict[str, float], m: Material) -> None:
    seconds = m.speech_8k.size / 8000
    print(
        f"Material: {len(m.utterances_8k)} utterances ({len(SENTENCES)} sentences x "
        f"{len(VOICES)} voices), {seconds:.1f} s of speech, 20 ms chunks\n"
    )
    header = (
        f"{'':14}{'inbound':>10}{'outbound':>10}{'in delay':>10}{'out delay':>11}"
        f"{'round trip':>12}{'PESQ':>7}{'PESQ out':>10}"
    )
    units = (
        f"{'':14}{'µs/frame':>10}{'µs/frame':>10}{'ms':>10}{'ms':>11}"
        f"{'SNR dB':>12}{'NB':>7}{'only':>10}"
    )
    print(header)
    print(units)
    for name, r in results.items():
        print(
            f"{name:14}{r['inbound_us']:10.1f}{r['outbound_us']:10.1f}"
            f"{r['inbound_delay_ms']:10.2f}{r['outbound_delay_ms']:11.2f}"
            f"{r['roundtrip_snr_db']:12.1f}{r['pesq']:7.2f}{more[f'pesq_outbound_{name}']:10.2f}"
        )
    print(
        f"\nPESQ of μ-law alone (the ceiling for the phone path): {more['pesq_mulaw_only']:.2f}"
        "\nPESQ out only: 24 kHz model speech -> 8 kHz μ-law, against soxr VHQ + μ-law."
        "\nGateway, aiortc's 48 kHz stereo -> 8 kHz μ-law per 20 ms frame:"
        f"\n  direct 48->8      {more['us_48k_direct']:6.1f} µs,"
        f" delay {more['delay_48k_direct']:.2f} ms"
        f"\n  chained 48->24->8 {more['us_48k_chained']:6.1f} µs,"
        f" delay {more['delay_48k_chained']:.2f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object and nothing else"
    )
    args = parser.parse_args(argv)
    material = make_material()
    results = {name: measure(name, material) for name in IMPLEMENTATIONS}
    if args.json:
        rounded = {n: {k: round(v, 3) for k, v in r.items()} for n, r in results.items()}
        print(json.dumps(rounded))
        return 0
    print_table(results, extras(material), material)
    return 0


if __name__ == "__main__":
    sys.exit(main())
