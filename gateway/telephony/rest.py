"""Call control through Twilio's REST API: hang up, redirect (transfer) and look up a live call.

The assistant's ``end_call`` and ``transfer_call`` tools cannot act on the media stream: the
stream is inside the call, and only the carrier can end or re-route the call itself. Twilio
does that through the Call resource::

    POST {base}/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json
         Status=completed                      hang up, even mid-conversation
         Twiml=<Response><Dial>+1...</Dial>     replace the running TwiML: Twilio ends the
                                                <Connect><Stream> (sends ``stop``, closes the
                                                websocket) and runs the new document
    GET  the same URL                           the Call resource as JSON

authenticated with HTTP Basic: the account SID and auth token, or an API key SID (``SK...``)
and its secret. Errors come back as ``{"code", "message", "more_info", "status"}``.

:class:`TwilioRestClient` sends those requests with bounded retries (network errors, 429 and
5xx; never other 4xx, which will not get better by asking again) and turns every failure into a
:class:`TwilioApiError` whose text tells an operator what to check. The password never appears
in an error, a log line or a repr. :func:`transfer_twiml` builds the TwiML of a transfer.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from typing import Any, Final

import httpx
from twilio.twiml.voice_response import VoiceResponse

from gateway.errors import CarrierApiError
from gateway.numbers import E164

__all__ = [
    "API_VERSION",
    "DEFAULT_BASE_URL",
    "ENDED_STATUSES",
    "MAX_TWIML_CHARS",
    "CallInfo",
    "CreateCall",
    "TwilioApiError",
    "TwilioRestClient",
    "transfer_twiml",
]

log = logging.getLogger("gateway.telephony.rest")

API_VERSION: Final = "2010-04-01"
DEFAULT_BASE_URL: Final = "https://api.twilio.com"
MAX_TWIML_CHARS: Final = 4000
"""Twilio's limit for the ``Twiml`` parameter of a call update."""
ENDED_STATUSES: Final = frozenset({"completed", "canceled", "failed", "busy", "no-answer"})

# SIDs go into the URL path: letters and digits only, so nothing can change the path.
_SID = re.compile(r"[A-Za-z0-9]{1,64}")
_ERRORS_URL = "https://www.twilio.com/docs/errors/"


@dataclass(frozen=True, slots=True)
class CreateCall:
    """The parameters of a new outbound call, as Twilio's Calls resource names them.

    ``machine_detection`` is ``Enable`` (decide at the start of the greeting),
    ``DetectMessageEnd`` (wait for the beep, for leaving a message) or ``None`` (no AMD). With
    ``amd_callback`` the detection runs asynchronously (``AsyncAmd=true``): the call connects
    at once and the result (``AnsweredBy``) is POSTed to that URL.
    """

    to: str
    from_: str
    twiml: str
    status_callback: str | None = None
    status_events: tuple[str, ...] = ("initiated", "ringing", "answered", "completed")
    machine_detection: str | None = None
    machine_detection_timeout_s: int | None = None
    amd_callback: str | None = None
    timeout_s: int | None = None
    """How long to let it ring (Twilio's ``Timeout``; its default is 60 s)."""

    def __post_init__(self) -> None:
        for name, number in (("To", self.to), ("From", self.from_)):
            if not E164.match(number):
                raise ValueError(f"{name} {number!r} is not an E.164 number such as +15551234567")
        if self.machine_detection not in (None, "Enable", "DetectMessageEnd"):
            raise ValueError(
                f"MachineDetection {self.machine_detection!r}: use Enable or DetectMessageEnd"
            )

    def form(self) -> dict[str, str | list[str]]:
        """The form fields; ``StatusCallbackEvent`` repeats once per event, as Twilio takes it."""
        out: dict[str, str | list[str]] = {"To": self.to, "From": self.from_, "Twiml": self.twiml}
        if self.status_callback:
            out["StatusCallback"] = self.status_callback
            out["StatusCallbackMethod"] = "POST"
            out["StatusCallbackEvent"] = list(self.status_events)
        if self.machine_detection:
            out["MachineDetection"] = self.machine_detection
            if self.machine_detection_timeout_s is not None:
                out["MachineDetectionTimeout"] = str(self.machine_detection_timeout_s)
            if self.amd_callback:
                out["AsyncAmd"] = "true"
                out["AsyncAmdStatusCallback"] = self.amd_callback
                out["AsyncAmdStatusCallbackMethod"] = "POST"
        if self.timeout_s is not None:
            out["Timeout"] = str(self.timeout_s)
        return out


@dataclass(frozen=True, slots=True)
class CallInfo:
    """The fields of Twilio's Call resource that call control needs."""

    sid: str
    account_sid: str
    status: str
    """``queued``, ``ringing``, ``in-progress``, ``completed``, ``busy``, ``failed``,
    ``no-answer`` or ``canceled``."""
    to: str
    from_: str
    direction: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    duration_s: int | None = None
    """Whole seconds, set once the call has ended."""

    @property
    def ended(self) -> bool:
        return self.status in ENDED_STATUSES

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> CallInfo:
        """From the Call resource JSON; raises ``ValueError`` when ``sid``/``status`` are
        missing (a response that is not a Call resource)."""
        sid, status = body.get("sid"), body.get("status")
        if not isinstance(sid, str) or not isinstance(status, str):
            raise ValueError("the response is not a Call resource (no sid/status)")
        duration = body.get("duration")
        return cls(
            sid=sid,
            account_sid=str(body.get("account_sid") or ""),
            status=status,
            to=str(body.get("to") or ""),
            from_=str(body.get("from") or ""),
            direction=body.get("direction") if isinstance(body.get("direction"), str) else None,
            start_time=_rfc2822(body.get("start_time")),
            end_time=_rfc2822(body.get("end_time")),
            duration_s=int(duration) if isinstance(duration, str | int) and duration else None,
        )


def _rfc2822(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


class TwilioApiError(CarrierApiError):
    """A Call resource request failed. ``str()`` is written for the operator: what failed,
    Twilio's status/code/message and what to check. Decide by the attributes, not the text.
    """

    def __init__(
        self,
        text: str,
        *,
        operation: str,
        call_sid: str,
        status: int | None,
        code: int | None,
        twilio_message: str,
        attempts: int,
    ) -> None:
        super().__init__(text)
        self.operation = operation
        self.call_sid = call_sid
        self.status = status
        """HTTP status, ``None`` when Twilio could not be reached (or never answered)."""
        self.code = code
        """Twilio's error code (20003, 20404, 21220, ...) when the body had one."""
        self.twilio_message = twilio_message
        self.attempts = attempts

    @property
    def auth_failed(self) -> bool:
        return self.status == 401 or self.code == 20003

    @property
    def not_found(self) -> bool:
        return self.status == 404 or self.code == 20404

    @property
    def call_not_in_progress(self) -> bool:
        """Twilio refused the update because the call has ended (code 21220)."""
        return self.code == 21220

    @property
    def unreachable(self) -> bool:
        return self.status is None

    @property
    def call_gone(self) -> bool:
        return self.call_not_in_progress or self.not_found


def _hint(status: int | None, code: int | None, username: str, ambiguous: bool) -> str:
    """What the operator should check for this failure."""
    if status is None:
        if ambiguous:
            return (
                "the request may have reached Twilio, so it was not repeated; "
                "fetch the call to see whether it took effect"
            )
        return "check GATEWAY_TWILIO_API_BASE_URL and the outbound network (proxy, firewall, DNS)"
    if status == 401 or code == 20003:
        if username.startswith("SK"):
            return (
                "check TWILIO_API_KEY and TWILIO_API_SECRET, and that the key belongs to "
                "TWILIO_ACCOUNT_SID"
            )
        return "check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"
    if code == 21220:
        return "the call is no longer in progress: the caller hung up or it was already moved"
    if status == 404 or code == 20404:
        return (
            "the call has already ended or the SID is wrong (or it belongs to another account "
            "than TWILIO_ACCOUNT_SID)"
        )
    if status == 403:
        return "the credentials may not do this (a restricted API key, or another account's call)"
    if status == 429:
        return "Twilio is rate limiting this account; it was retried, try again later"
    if status >= 500:
        return "Twilio had a server-side problem; it was retried (see status.twilio.com)"
    if status == 400:
        return "Twilio rejected a parameter of the request (see its message)"
    return ""


class TwilioRestClient:
    """Twilio's Call resource for one account.

    ``username``/``password`` are the account SID and auth token, or an API key SID and its
    secret. Pass ``http`` to share a connection pool (it is then not closed by :meth:`aclose`).
    Each attempt is bounded by ``timeout_s``; at most ``max_attempts`` are made, and only for
    network errors, 429 and 5xx, waiting a jittered backoff or Twilio's ``Retry-After`` when it
    is at most ``max_retry_wait_s`` (a longer wait fails at once: a live call cannot wait).
    """

    def __init__(
        self,
        account_sid: str,
        username: str,
        password: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        http: httpx.AsyncClient | None = None,
        timeout_s: float = 5.0,
        max_attempts: int = 3,
        backoff_s: float = 0.2,
        max_retry_wait_s: float = 2.0,
    ) -> None:
        if not _SID.fullmatch(account_sid):
            raise ValueError(f"account SID {account_sid[:40]!r} is not letters and digits")
        if not username or not password:
            raise ValueError("the Twilio REST API needs a username (SID) and a password")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {base_url!r} must start with http:// or https://")
        if max_attempts < 1 or timeout_s <= 0:
            raise ValueError("max_attempts must be >= 1 and timeout_s > 0")
        self.account_sid = account_sid
        self.username = username
        self._password = password
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_retry_wait_s = max_retry_wait_s
        self._auth = httpx.BasicAuth(username, password)
        self._owned = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout_s)

    def __repr__(self) -> str:
        return (
            f"TwilioRestClient(account_sid={self.account_sid!r}, username={self.username!r}, "
            f"base_url={self.base_url!r})"
        )

    async def aclose(self) -> None:
        if self._owned:
            await self._http.aclose()

    async def __aenter__(self) -> TwilioRestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- the operations ---------------------------------------------------------------------

    async def hang_up(self, call_sid: str) -> CallInfo:
        """End the call now (``Status=completed``), whatever it is doing."""
        return await self._call("POST", call_sid, "hang-up", {"Status": "completed"}, True)

    async def redirect(self, call_sid: str, twiml: str) -> CallInfo:
        """Replace the call's TwiML with ``twiml`` (e.g. :func:`transfer_twiml`).

        Twilio ends the media stream and runs the new document. A redirect whose request may
        have reached Twilio (the response was lost) is not repeated: running the TwiML twice
        would dial twice.
        """
        _check_twiml(twiml)
        return await self._call("POST", call_sid, "redirect", {"Twiml": twiml}, False)

    async def transfer(
        self,
        call_sid: str,
        number: str,
        *,
        caller_id: str | None = None,
        announce: str | None = None,
    ) -> CallInfo:
        """Redirect the call to :func:`transfer_twiml` of ``number`` (E.164)."""
        twiml = transfer_twiml(number, caller_id=caller_id, announce=announce)
        return await self.redirect(call_sid, twiml)

    async def fetch(self, call_sid: str) -> CallInfo:
        """The call as Twilio sees it now (status, times)."""
        return await self._call("GET", call_sid, "fetch", None, True)

    async def create_call(self, request: CreateCall) -> CallInfo:
        """Place a call (``POST .../Calls.json``); Twilio answers at once with the queued call.

        Never repeated once the request may have reached Twilio (the response was lost): a
        second create would ring the callee twice. Only a request that never left is retried.
        """
        _check_twiml(request.twiml)
        url = f"{self.base_url}/{API_VERSION}/Accounts/{self.account_sid}/Calls.json"
        return await self._call("POST", "(new)", "create", request.form(), False, url=url)

    def call_url(self, call_sid: str) -> str:
        if not _SID.fullmatch(call_sid):
            raise ValueError(f"call SID {call_sid[:40]!r} is not letters and digits")
        return f"{self.base_url}/{API_VERSION}/Accounts/{self.account_sid}/Calls/{call_sid}.json"

    # --- one request, with retries ----------------------------------------------------------

    async def _call(
        self,
        method: str,
        call_sid: str,
        operation: str,
        form: Mapping[str, str | list[str]] | None,
        replay_safe: bool,
        *,
        url: str | None = None,
    ) -> CallInfo:
        url = url or self.call_url(call_sid)
        headers = {"Accept": "application/json", "User-Agent": "gateway-call-control/1"}
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(
                    method, url, data=form, headers=headers, auth=self._auth, timeout=self.timeout_s
                )
            except httpx.TransportError as exc:
                # Before the request went out (connect, pool) a repeat is always safe.
                unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                unsent = unsent or isinstance(exc, httpx.PoolTimeout)
                retry = (replay_safe or unsent) and not isinstance(exc, httpx.UnsupportedProtocol)
                if retry and attempt < self.max_attempts:
                    log.warning(
                        "Twilio %s of call %s: %s (attempt %d), retrying",
                        operation,
                        call_sid,
                        type(exc).__name__,
                        attempt,
                    )
                    await asyncio.sleep(self._backoff(attempt))
                    continue
                raise self._network_error(operation, call_sid, exc, attempt, not unsent) from None
            status = response.status_code
            if 200 <= status < 300:
                return self._parse(operation, call_sid, response, attempt)
            if status == 429 or status >= 500:
                wait = _retry_after(response.headers.get("retry-after"))
                too_long = wait is not None and wait > self.max_retry_wait_s
                if attempt < self.max_attempts and not too_long:
                    log.warning(
                        "Twilio %s of call %s: HTTP %d (attempt %d), retrying",
                        operation,
                        call_sid,
                        status,
                        attempt,
                    )
                    await asyncio.sleep(max(wait or 0.0, self._backoff(attempt)))
                    continue
                extra = f"; Twilio asked to wait {wait:g} s" if too_long and wait else ""
                raise self._http_error(operation, call_sid, response, attempt, extra)
            raise self._http_error(operation, call_sid, response, attempt)

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter (half to full), so retries do not line up."""
        base: float = self.backoff_s * 2.0 ** (attempt - 1)
        return min(self.max_retry_wait_s, base * (0.5 + random.random() / 2))

    def _parse(
        self, operation: str, call_sid: str, response: httpx.Response, attempt: int
    ) -> CallInfo:
        try:
            body = response.json()
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
            return CallInfo.from_json(body)
        except ValueError as exc:
            text = (
                f"Twilio {operation} of call {call_sid}: HTTP {response.status_code} but the body "
                f"is not a Call resource ({exc}): check GATEWAY_TWILIO_API_BASE_URL points at "
                "the Twilio API"
            )
            raise TwilioApiError(
                self._redact(text),
                operation=operation,
                call_sid=call_sid,
                status=response.status_code,
                code=None,
                twilio_message="",
                attempts=attempt,
            ) from None

    def _http_error(
        self,
        operation: str,
        call_sid: str,
        response: httpx.Response,
        attempt: int,
        extra: str = "",
    ) -> TwilioApiError:
        status = response.status_code
        code: int | None = None
        message = ""
        more_info = ""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            raw_code = body.get("code")
            code = raw_code if isinstance(raw_code, int) else None
            message = str(body.get("message") or "")[:300]
            more_info = str(body.get("more_info") or "")
        else:
            message = response.text[:200].strip()
        if not more_info and code is not None:
            more_info = f"{_ERRORS_URL}{code}"
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        what = f"HTTP {status}" + (f" {phrase}" if phrase else "")
        if code is not None:
            what += f", Twilio error {code}"
        if message:
            what += f": {message}"
        hint = _hint(status, code, self.username, ambiguous=False)
        tries = f" (after {attempt} attempts)" if attempt > 1 else ""
        text = f"Twilio {operation} of call {call_sid} failed{tries}: {what}"
        if hint:
            text += f"; {hint}"
        text += extra
        if more_info:
            text += f" ({more_info})"
        return TwilioApiError(
            self._redact(text),
            operation=operation,
            call_sid=call_sid,
            status=status,
            code=code,
            twilio_message=self._redact(message),
            attempts=attempt,
        )

    def _network_error(
        self,
        operation: str,
        call_sid: str,
        exc: httpx.TransportError,
        attempt: int,
        ambiguous: bool,
    ) -> TwilioApiError:
        detail = str(exc) or type(exc).__name__
        tries = f" (after {attempt} attempts)" if attempt > 1 else ""
        text = (
            f"Twilio {operation} of call {call_sid} failed{tries}: could not get an answer from "
            f"{self.base_url} ({type(exc).__name__}: {detail}); "
            f"{_hint(None, None, self.username, ambiguous)}"
        )
        return TwilioApiError(
            self._redact(text),
            operation=operation,
            call_sid=call_sid,
            status=None,
            code=None,
            twilio_message="",
            attempts=attempt,
        )

    def _redact(self, text: str) -> str:
        """Whatever Twilio or a proxy echoed back, the password never leaves this object."""
        return text.replace(self._password, "***") if self._password else text


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), ``None`` if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    when = _rfc2822(value)
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(when.tzinfo)).total_seconds())


def _check_twiml(twiml: str) -> None:
    if len(twiml) > MAX_TWIML_CHARS:
        raise ValueError(f"TwiML of {len(twiml)} characters exceeds Twilio's {MAX_TWIML_CHARS}")
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError as exc:
        raise ValueError(f"not well-formed TwiML: {exc}") from None
    if root.tag != "Response":
        raise ValueError(f"TwiML must be a <Response> document, not <{root.tag}>")


def transfer_twiml(
    number: str, *, caller_id: str | None = None, announce: str | None = None
) -> str:
    """The TwiML that transfers a call to ``number``: ``<Say>announce</Say>`` (optional) then
    ``<Dial callerId=...>number</Dial>``. Numbers must be E.164 (``+15551234567``)."""
    if not E164.match(number):
        raise ValueError(f"{number!r} is not an E.164 number such as +15551234567")
    if caller_id is not None and not E164.match(caller_id):
        raise ValueError(f"callerId {caller_id!r} is not an E.164 number such as +15551234567")
    response = VoiceResponse()
    if announce and announce.strip():
        response.say(announce.strip())
    response.dial(number, caller_id=caller_id)
    twiml = str(response)
    _check_twiml(twiml)
    return twiml
