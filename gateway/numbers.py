"""Per-number profiles: what the assistant is for each dialled number.

A profiles file (YAML) holds a ``default`` profile and a ``numbers`` table keyed by the called
E.164 number. Each number's profile is the default with that number's fields laid over it, so a
file only states what differs::

    default:
      instructions: You are the front desk of Example Dental. Be brief.
      voice: marin
      greeting: Greet the caller and ask how you can help.
    numbers:
      "+15551230001":
        voice: cedar
        turn_detection: {type: semantic_vad, eagerness: high}

The file is validated as a whole (pydantic); an error names the number and the field at fault.
:class:`ProfileStore` holds the profiles in force and swaps them atomically on a valid reload.
"""

from __future__ import annotations

import re
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.audio.format import UpstreamCodec
from gateway.errors import ConfigError

E164 = re.compile(r"^\+[1-9]\d{1,14}$")

Voice = Literal[
    "alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"
]

DEFAULT_INSTRUCTIONS = (
    "You are a friendly, concise voice assistant answering a phone call. Keep answers short, "
    "speak naturally, and ask one question at a time."
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerVad(_Strict):
    type: Literal["server_vad"] = "server_vad"
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    prefix_padding_ms: int = Field(default=300, ge=0, le=5000)
    silence_duration_ms: int = Field(default=500, ge=0, le=10_000)
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = Field(default=None, ge=5000, le=30_000)


class SemanticVad(_Strict):
    type: Literal["semantic_vad"] = "semantic_vad"
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    create_response: bool = True
    interrupt_response: bool = True


TurnDetection = Annotated[ServerVad | SemanticVad, Field(discriminator="type")]


class Transcription(_Strict):
    model: str = "gpt-4o-mini-transcribe"
    language: str | None = None
    prompt: str | None = None


class Fallback(_Strict):
    """What the caller hears when the assistant cannot be reached (TwiML after the stream)."""

    message: str = "Sorry, our assistant is not available right now. Please call again later."
    number: str | None = Field(default=None, description="E.164 number to <Dial> instead")

    @field_validator("number")
    @classmethod
    def _e164(cls, v: str | None) -> str | None:
        if v is not None and not E164.match(v):
            raise ValueError(f"{v!r} is not an E.164 number such as +15551234567")
        return v


class TransferTarget(_Strict):
    """A destination the assistant may transfer calls to (the allow list is these, no others)."""

    number: str
    description: str | None = Field(
        default=None, description="Told to the model so it knows when this destination fits"
    )

    @field_validator("number")
    @classmethod
    def _e164(cls, v: str) -> str:
        v = normalise_number(v)
        if not E164.match(v):
            raise ValueError(f"{v!r} is not an E.164 number such as +15551234567")
        return v


class Tools(_Strict):
    """Built-in call-control tools the model may call; the gateway executes them.

    Both act through Twilio's REST API, so they are offered to the model only when the gateway
    has REST credentials (``TWILIO_ACCOUNT_SID`` and a token or API key).
    """

    end_call: bool = Field(default=False, description="Let the assistant say goodbye and hang up")
    transfer_call: dict[str, TransferTarget] = Field(
        default_factory=dict,
        description="Named destinations the assistant may transfer to; empty turns the tool off",
    )

    @field_validator("transfer_call")
    @classmethod
    def _names(cls, v: dict[str, TransferTarget]) -> dict[str, TransferTarget]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z0-9_\- ]{1,40}", name):
                raise ValueError(
                    f"destination name {name!r}: use 1-40 letters, digits, spaces, '-' or '_'"
                )
        return v

    @property
    def any(self) -> bool:
        return self.end_call or bool(self.transfer_call)


AnswerRule = Literal["converse", "voicemail", "hang_up"]


class Outbound(_Strict):
    """How calls this profile places behave (``POST /calls``, ``gateway call``; docs/outbound.md).

    Who answered (Twilio's answering machine detection, ``AnsweredBy``) decides what the
    assistant does: a human gets the conversation, a machine the voicemail message or a hang-up,
    a fax or an undecided answer the rule named here.
    """

    speak_first: bool = Field(
        default=False,
        description="A human answered: greet at once (true) or wait for their hello (false)",
    )
    machine_detection: Literal["DetectMessageEnd", "Enable", "off"] = Field(
        default="DetectMessageEnd",
        description="DetectMessageEnd waits for the beep (to leave a message); Enable decides "
        "at the start of the greeting (faster, for hanging up on machines); off: no detection",
    )
    detection_timeout_s: int = Field(
        default=30, ge=3, le=59, description="Twilio's MachineDetectionTimeout"
    )
    on_machine: Literal["voicemail", "hang_up"] = "hang_up"
    voicemail_message: str | None = Field(
        default=None, description="What the assistant says after the beep, then it hangs up"
    )
    on_fax: AnswerRule = "hang_up"
    on_unknown: AnswerRule = "converse"
    on_detection_lost: AnswerRule = Field(
        default="converse",
        description="No AMD result within detection_timeout_s + 5 s (the callback was lost)",
    )
    max_concurrent: int | None = Field(
        default=None, ge=1, description="Outbound calls of this profile at once; None: no limit"
    )
    calls_per_second: float | None = Field(
        default=None, gt=0, le=100, description="Pacing of new calls (Twilio's account CPS)"
    )

    @model_validator(mode="after")
    def _voicemail_needs_message(self) -> Outbound:
        uses = {self.on_machine, self.on_fax, self.on_unknown, self.on_detection_lost}
        if "voicemail" in uses and not (self.voicemail_message or "").strip():
            raise ValueError("a 'voicemail' rule needs outbound.voicemail_message")
        return self


class Profile(_Strict):
    """Everything that varies per dialled number. Defaults make a usable assistant."""

    name: str = "default"
    instructions: str = DEFAULT_INSTRUCTIONS
    voice: Voice = "marin"
    model: str = "gpt-realtime"
    greeting: str | None = Field(
        default="Greet the caller briefly and ask how you can help.",
        description="Instructions for the first response, spoken before the caller talks",
    )
    turn_detection: TurnDetection | None = Field(default_factory=ServerVad)
    transcription: Transcription | None = Field(default_factory=Transcription)
    local_barge_in: bool = Field(
        default=False, description="Also interrupt on the gateway's own VAD (faster, less robust)"
    )
    truncate_to_heard: bool = Field(
        default=True,
        description="After a barge-in, truncate the assistant item to what the caller heard",
    )
    max_call_seconds: int = Field(default=1800, ge=10, le=4 * 3600)
    max_cost_usd: float | None = Field(
        default=None,
        gt=0,
        description="Upstream cost at which the assistant is asked to wrap up and the call ends",
    )
    tools: Tools = Field(default_factory=Tools)
    dtmf_timeout_ms: int = Field(
        default=1500,
        ge=200,
        le=10_000,
        description="Keys pressed within this gap reach the model together, as one entry",
    )
    record: bool = Field(
        default=False, description="Record the call as a stereo WAV (caller left, assistant right)"
    )
    upstream_codec: UpstreamCodec | None = Field(
        default=None,
        description=(
            "Audio codec on the Realtime leg: opus, pcmu or pcma; unset uses GATEWAY_UPSTREAM_CODEC"
        ),
    )
    fallback: Fallback = Field(default_factory=Fallback)
    carrier: Literal["twilio", "signalwire", "telnyx", "plivo"] | None = Field(
        default=None,
        description="The carrier this number belongs to: its webhook is refused on any other "
        "carrier's route. Unset: whichever route the call arrives on decides.",
    )
    outbound: Outbound = Field(default_factory=Outbound)

    def codec(self, default: UpstreamCodec) -> UpstreamCodec:
        """The Realtime leg's codec for this number: its own, else the process default."""
        return self.upstream_codec or default

    def session_config(
        self, *, call_control: bool = False, codec: UpstreamCodec = "opus"
    ) -> dict[str, Any]:
        """The GA ``session`` object for ``session.update`` / the unified ``session`` part.

        ``call_control``: the gateway can act on the carrier (REST credentials are set), so the
        profile's built-in tools are declared to the model. ``codec``: the leg's codec; a
        G.711 leg sets ``audio.input.format`` and ``audio.output.format`` to match it, as
        OpenAI's own phone-quality WebRTC client does (an Opus leg leaves them unset).
        """
        audio_input: dict[str, Any] = {
            "turn_detection": (
                None
                if self.turn_detection is None
                else self.turn_detection.model_dump(exclude_none=True)
            ),
            "transcription": (
                None
                if self.transcription is None
                else self.transcription.model_dump(exclude_none=True)
            ),
        }
        audio_output: dict[str, Any] = {"voice": self.voice}
        if codec != "opus":
            audio_input = {"format": {"type": f"audio/{codec}"}, **audio_input}
            audio_output = {"format": {"type": f"audio/{codec}"}, **audio_output}
        config: dict[str, Any] = {
            "type": "realtime",
            "model": self.model,
            "instructions": self.instructions,
            "output_modalities": ["audio"],
            "audio": {"input": audio_input, "output": audio_output},
        }
        if call_control and self.tools.any:
            config["tools"] = tool_definitions(self.tools)
            config["tool_choice"] = "auto"
        return config


END_CALL = "end_call"
TRANSFER_CALL = "transfer_call"


def tool_definitions(tools: Tools) -> list[dict[str, Any]]:
    """The GA ``session.tools`` entries for the enabled built-in tools."""
    out: list[dict[str, Any]] = []
    if tools.end_call:
        out.append(
            {
                "type": "function",
                "name": END_CALL,
                "description": (
                    "End the phone call. Use it when the caller says goodbye or asks to hang "
                    "up, or the conversation is clearly over. You will be asked to say goodbye "
                    "first; the line is then hung up."
                ),
                "parameters": {
                    "type": "object",
                    "properties": {
                        "reason": {
                            "type": "string",
                            "description": "Why the call is ending, in a few words",
                        }
                    },
                    "required": [],
                },
            }
        )
    if tools.transfer_call:
        names = sorted(tools.transfer_call)
        described = "; ".join(
            f"{n}: {t.description}" if t.description else n
            for n, t in sorted(tools.transfer_call.items())
        )
        out.append(
            {
                "type": "function",
                "name": TRANSFER_CALL,
                "description": (
                    "Transfer the caller to a person or team. Only these destinations exist: "
                    f"{described}. Tell the caller before you transfer."
                ),
                "parameters": {
                    "type": "object",
                    "properties": {
                        "destination": {
                            "type": "string",
                            "enum": names,
                            "description": "One of the listed destinations",
                        }
                    },
                    "required": ["destination"],
                },
            }
        )
    return out


@dataclass(frozen=True, slots=True)
class Profiles:
    """An immutable, validated set of profiles; look numbers up with :meth:`for_number`."""

    default: Profile
    numbers: dict[str, Profile]
    source: str

    def using_tools(self) -> list[str]:
        """Names of the profiles that enable a call-control tool."""
        return [p.name for p in (self.default, *self.numbers.values()) if p.tools.any]

    def named(self, name: str) -> Profile | None:
        """The profile called ``name`` ("default" or a number of the file), None if unknown."""
        if name == "default":
            return self.default
        return self.numbers.get(normalise_number(name))

    def for_number(self, called: str | None) -> Profile:
        """The profile for the called number, or the default one for unknown numbers."""
        if called is not None:
            found = self.numbers.get(normalise_number(called))
            if found is not None:
                return found
        return self.default


def normalise_number(raw: str) -> str:
    """Strip the spaces, dashes and parentheses people put in numbers; keep a leading ``+``."""
    return re.sub(r"[\s\-().]", "", raw)


def builtin_profiles() -> Profiles:
    """The profiles in force when no file is configured: one default assistant."""
    return Profiles(default=Profile(), numbers={}, source="built-in default")


def parse_profiles(data: Any, *, source: str) -> Profiles:
    """Validate a loaded document; raise :class:`ConfigError` naming each number and field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with 'default' and 'numbers'")
    unknown = set(data) - {"default", "numbers"}
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level key(s) {sorted(unknown)}; expected 'default', 'numbers'"
        )
    problems: list[str] = []
    base: Any = data.get("default") or {}
    default: Profile | None = None
    if not isinstance(base, dict):
        problems.append("default: expected a mapping of profile fields")
        base = {}
    try:
        default = Profile.model_validate({"name": "default", **base})
    except ValidationError as exc:
        problems.extend(_describe("default", exc))
    numbers_raw = data.get("numbers") or {}
    numbers: dict[str, Profile] = {}
    if not isinstance(numbers_raw, dict):
        problems.append("numbers: expected a mapping keyed by E.164 number")
        numbers_raw = {}
    for raw_number, fields in numbers_raw.items():
        number = normalise_number(str(raw_number))
        if not E164.match(number):
            problems.append(f"numbers.{raw_number}: not an E.164 number such as +15551234567")
            continue
        if number in numbers:
            problems.append(f"numbers.{raw_number}: listed twice")
            continue
        if fields is not None and not isinstance(fields, dict):
            problems.append(f"numbers.{number}: expected a mapping of profile fields")
            continue
        own = fields or {}
        merged = {**base, "name": number, **own}
        try:
            numbers[number] = Profile.model_validate(merged)
        except ValidationError as exc:
            # A field inherited from a default that is itself invalid was reported there: say
            # it once, not again under every number.
            inherited = set(base) - set(own) if default is None else set()
            problems.extend(_describe(f"numbers.{number}", exc, skip=inherited))
    if problems or default is None:
        raise ConfigError(
            f"{source}: invalid profiles:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    return Profiles(default=default, numbers=numbers, source=source)


def load_profiles(path: Path) -> Profiles:
    """Read and validate a profiles file (YAML; JSON is YAML too)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read profiles file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_profiles(data, source=str(path))


def _describe(where: str, exc: ValidationError, skip: AbstractSet[str] = frozenset()) -> list[str]:
    out = []
    for err in exc.errors():
        if err["loc"] and str(err["loc"][0]) in skip:
            continue
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        out.append(f"{where}.{loc}: {err['msg']}" if loc else f"{where}: {err['msg']}")
    return out


class ProfileStore:
    """The profiles in force. :meth:`reload` swaps them only when the new file is valid."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._profiles = builtin_profiles() if path is None else load_profiles(path)
        self._mtime = self._stat()
        self.reloads = 0
        self.failed_reloads = 0

    @property
    def current(self) -> Profiles:
        return self._profiles

    def for_number(self, called: str | None) -> Profile:
        return self._profiles.for_number(called)

    def _stat(self) -> float | None:
        if self.path is None:
            return None
        try:
            return self.path.stat().st_mtime_ns / 1e9
        except OSError:
            return None

    def changed_on_disk(self) -> bool:
        """True when the file's modification time differs from the one last loaded."""
        return self.path is not None and self._stat() != self._mtime

    def reload(self) -> Profiles:
        """Load the file again; on error raise :class:`ConfigError` and keep the old profiles."""
        if self.path is None:
            return self._profiles
        self._mtime = self._stat()
        try:
            fresh = load_profiles(self.path)
        except ConfigError:
            self.failed_reloads += 1
            raise
        self._profiles = fresh
        self.reloads += 1
        return fresh
