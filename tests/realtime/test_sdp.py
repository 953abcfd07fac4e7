"""SDP helpers: static payload types completed, the negotiated codec found."""

from __future__ import annotations

from aiortc.sdp import SessionDescription

from gateway.realtime.sdp import audio_codecs, complete_static_rtpmaps, negotiated_audio_codec

# The shape of OpenAI's published answer to POST /v1/realtime/calls (PROTOCOLS.md A3): payload
# types 111, 0 and 8 on the m-line, an rtpmap line for 111 only.
OPENAI_STYLE_ANSWER = "\r\n".join(
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8",
        "c=IN IP4 0.0.0.0",
        "a=mid:0",
        "a=sendrecv",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=setup:active",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=mid:1",
        "a=sctp-port:5000",
        "",
    ]
)


def test_static_payload_types_get_their_rtpmap_lines_in_the_audio_section_only() -> None:
    done = complete_static_rtpmaps(OPENAI_STYLE_ANSWER)
    audio, application = done.split("m=application")
    assert "a=rtpmap:0 PCMU/8000" in audio and "a=rtpmap:8 PCMA/8000" in audio
    assert "rtpmap" not in application
    parsed = SessionDescription.parse(done)  # what aiortc reads
    names = [c.mimeType for c in parsed.media[0].rtp.codecs]
    assert names == ["audio/opus", "audio/PCMU", "audio/PCMA"]
    assert complete_static_rtpmaps(done) == done  # idempotent: nothing listed twice


def test_the_negotiated_codec_is_the_answers_first_that_was_offered() -> None:
    assert audio_codecs(OPENAI_STYLE_ANSWER) == ["audio/opus", "audio/PCMU", "audio/PCMA"]
    assert negotiated_audio_codec(OPENAI_STYLE_ANSWER, ["audio/PCMU"]) == "audio/PCMU"
    assert negotiated_audio_codec(OPENAI_STYLE_ANSWER, ["audio/pcma"]) == "audio/PCMA"
    assert negotiated_audio_codec(OPENAI_STYLE_ANSWER, ["audio/opus", "audio/PCMU"]) == "audio/opus"
    assert negotiated_audio_codec(OPENAI_STYLE_ANSWER, ["audio/G722"]) is None
    assert audio_codecs("v=0\r\n") == []
