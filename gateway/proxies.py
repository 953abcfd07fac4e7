"""Whom to believe about a request's origin: its client address, scheme and host.

``Forwarded`` (RFC 7239) and ``X-Forwarded-For`` / ``-Proto`` / ``-Host`` are written by
whatever sits in front of the gateway, and by anyone else who cares to send them. They are
believed only when the TCP peer is one of the configured proxies (``GATEWAY_TRUSTED_PROXIES``);
from any other peer they change nothing. uvicorn's own handling of these headers is turned off
(:func:`gateway.serving.serve_app`), because it trusts loopback by default and rewrites the
client and scheme before the app can tell who sent them.

From a trusted proxy:

- the client is found by walking the ``for`` chain from the nearest hop outwards and taking
  the first address that is not itself a trusted proxy (the left-most values can be anything
  the client wrote, so they are never taken first);
- scheme and host are the nearest hop's values (the last element), which the proxy wrote.

``Forwarded`` wins over the ``X-Forwarded-*`` family when both are present. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Network", "Origin", "is_trusted", "parse_networks", "resolve"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_SCHEMES = frozenset({"http", "https", "ws", "wss"})
# hostname or IPv4, or a bracketed IPv6 literal, then an optional port
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?"
)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a request came from, as far as the gateway may believe it."""

    client: str | None
    """The caller's address: the TCP peer, or what a trusted proxy says it forwarded for."""
    scheme: str
    """``http``/``https``/``ws``/``wss`` the client used."""
    host: str
    """``host[:port]`` the client addressed (its ``Host`` header, or a trusted proxy's)."""
    via_proxy: bool = False

    @property
    def hostname(self) -> str:
        """:attr:`host` without its port or IPv6 brackets."""
        host = self.host
        if host.startswith("["):
            return host[1 : host.find("]")] if "]" in host else host
        return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def parse_networks(specs: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDR ranges (``10.0.0.0/8``, ``::1``); raise :class:`ValueError` naming
    the bad one."""
    networks: list[Network] = []
    for spec in specs:
        try:
            networks.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{spec!r} is not an IP address or CIDR range") from None
    return tuple(networks)


def is_trusted(address: str | None, trusted: Sequence[Network]) -> bool:
    """Whether ``address`` (an IP literal) lies in one of ``trusted``."""
    if not address or not trusted:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def resolve(
    *,
    peer: str | None,
    scheme: str,
    host: str,
    headers: Iterable[tuple[str, str]],
    trusted: Sequence[Network],
) -> Origin:
    """The :class:`Origin` of a request from TCP ``peer`` that arrived on ``scheme`` with
    ``Host: host``; ``headers`` are all its (name, value) pairs, repeats included."""
    if not is_trusted(peer, trusted):
        return Origin(client=peer, scheme=scheme, host=host)
    pairs = [(name.lower(), value) for name, value in headers]
    forwarded = _values(pairs, "forwarded")
    if forwarded:
        elements = [_forwarded_element(e) for e in forwarded]
        hops = [e.get("for", "") for e in elements]
        proto, fhost = elements[-1].get("proto"), elements[-1].get("host")
    else:
        hops = _values(pairs, "x-forwarded-for")
        protos, hosts = _values(pairs, "x-forwarded-proto"), _values(pairs, "x-forwarded-host")
        proto, fhost = (protos[-1] if protos else None), (hosts[-1] if hosts else None)
    client = peer
    for hop in reversed(hops):
        address = _address(hop)
        client = address
        if address is None or not is_trusted(address, trusted):
            break
    if proto is not None and proto.lower() in _SCHEMES:
        ws = scheme in ("ws", "wss")
        secure = proto.lower() in ("https", "wss")
        scheme = ("wss" if secure else "ws") if ws else ("https" if secure else "http")
    if fhost is not None and _HOST.fullmatch(fhost):
        host = fhost
    return Origin(client=client, scheme=scheme, host=host, via_proxy=True)


def _values(pairs: Sequence[tuple[str, str]], name: str) -> list[str]:
    """Every comma-separated value of header ``name``, over repeated headers, in order."""
    return [v.strip() for n, value in pairs if n == name for v in value.split(",") if v.strip()]


def _forwarded_element(element: str) -> dict[str, str]:
    """``for=1.2.3.4;proto=https;host=a`` as a dict (lower-case keys, quotes removed)."""
    out: dict[str, str] = {}
    for part in element.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip().lower()] = value.strip().strip('"')
    return out


def _address(hop: str) -> str | None:
    """The IP in a ``for`` value (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``::1``); ``None``
    for ``unknown``, obfuscated names and anything else."""
    hop = hop.strip().strip('"')
    if hop.startswith("["):
        hop = hop[1 : hop.find("]")] if "]" in hop else ""
    elif hop.count(":") == 1:
        hop = hop.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return None
