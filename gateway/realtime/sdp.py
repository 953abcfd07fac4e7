"""SDP facts the Realtime client needs, as pure functions over text. No aiortc state, no I/O.

Static payload types. RFC 3551 fixes payload types 0 (PCMU/8000) and 8 (PCMA/8000), so an SDP
may list them on the ``m=`` line without ``a=rtpmap`` lines — OpenAI's published answer for
``POST /v1/realtime/calls`` does (``m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8`` with only
``a=rtpmap:111 opus/48000/2``). aiortc builds its codec list from ``a=rtpmap`` lines only, so it
would see Opus alone and refuse a G.711-only offer's answer. :func:`complete_static_rtpmaps` adds
the missing lines before aiortc reads the answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

__all__ = ["audio_codecs", "complete_static_rtpmaps", "negotiated_audio_codec"]

STATIC_AUDIO: Final = {0: "PCMU/8000", 8: "PCMA/8000", 9: "G722/8000"}
"""RFC 3551 static payload types aiortc can use, with their rtpmap encoding names."""


def _lines(sdp: str) -> list[str]:
    return sdp.replace("\r\n", "\n").split("\n")


def complete_static_rtpmaps(sdp: str) -> str:
    """``sdp`` with an ``a=rtpmap`` line for every static audio payload type an ``m=audio``
    line lists without one. Text is otherwise unchanged (CRLF line ends out)."""
    lines = _lines(sdp)
    out: list[str] = []
    missing: list[int] = []
    mapped: set[int] = set()

    def close_section() -> None:
        out.extend(f"a=rtpmap:{pt} {STATIC_AUDIO[pt]}" for pt in missing if pt not in mapped)
        missing.clear()
        mapped.clear()

    trailing = lines[-1] == ""
    for line in lines[:-1] if trailing else lines:
        if line.startswith("m="):
            close_section()
            fields = line[2:].split()
            if fields and fields[0] == "audio":
                missing.extend(int(f) for f in fields[3:] if f.isdigit() and int(f) in STATIC_AUDIO)
        elif line.startswith("a=rtpmap:"):
            pt = line[len("a=rtpmap:") :].split(" ", 1)[0]
            if pt.isdigit():
                mapped.add(int(pt))
        out.append(line)
    close_section()
    return "\r\n".join(out) + "\r\n"


def audio_codecs(sdp: str) -> list[str]:
    """The first audio section's codecs as MIME names (``audio/opus``, ``audio/PCMU``), in the
    order the ``m=`` line lists them; static payload types count without an rtpmap line."""
    lines = _lines(complete_static_rtpmaps(sdp))
    order: list[int] = []
    names: dict[int, str] = {}
    in_audio = False
    for line in lines:
        if line.startswith("m="):
            if in_audio:
                break
            fields = line[2:].split()
            in_audio = bool(fields) and fields[0] == "audio"
            if in_audio:
                order = [int(f) for f in fields[3:] if f.isdigit()]
        elif in_audio and line.startswith("a=rtpmap:"):
            pt, _, encoding = line[len("a=rtpmap:") :].partition(" ")
            if pt.isdigit():
                names[int(pt)] = "audio/" + encoding.split("/", 1)[0]
    return [names[pt] for pt in order if pt in names]


def negotiated_audio_codec(answer_sdp: str, offered: Iterable[str]) -> str | None:
    """The codec both sides will use: the answer's first audio codec that was offered (MIME
    names, case-insensitive); None when the answer has none of them."""
    wanted = {name.lower() for name in offered}
    for name in audio_codecs(answer_sdp):
        if name.lower() in wanted:
            return name
    return None
