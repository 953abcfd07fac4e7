"""Proxy headers count only from trusted proxies (gateway.proxies)."""

from __future__ import annotations

import pytest

from gateway.proxies import Origin, parse_networks, resolve

TRUSTED = parse_networks(["10.0.0.0/8", "::1"])
XFF = [
    ("X-Forwarded-For", "203.0.113.7"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "gw.example.com"),
]


def _resolve(peer: str, headers: list[tuple[str, str]], scheme: str = "http") -> Origin:
    return resolve(peer=peer, scheme=scheme, host="10.0.0.5:8080", headers=headers, trusted=TRUSTED)


def test_headers_from_anyone_else_change_nothing() -> None:
    assert _resolve("198.51.100.1", XFF) == Origin("198.51.100.1", "http", "10.0.0.5:8080")
    assert _resolve("127.0.0.1", XFF) == Origin("127.0.0.1", "http", "10.0.0.5:8080")
    nobody = resolve(peer="10.0.0.9", scheme="http", host="h", headers=XFF, trusted=())
    assert nobody == Origin("10.0.0.9", "http", "h")


def test_a_trusted_proxy_sets_client_scheme_and_host() -> None:
    assert _resolve("10.0.0.9", XFF) == Origin("203.0.113.7", "https", "gw.example.com", True)
    assert _resolve("10.0.0.9", XFF, scheme="ws").scheme == "wss"


def test_the_client_is_the_first_untrusted_hop_from_the_nearest() -> None:
    spoofed = [("X-Forwarded-For", "127.0.0.1, 203.0.113.7, 10.1.2.3")]
    assert _resolve("10.0.0.9", spoofed).client == "203.0.113.7"
    repeated = [("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-For", "10.1.1.1")]
    assert _resolve("10.0.0.9", repeated).client == "1.1.1.1"
    assert _resolve("10.0.0.9", [("X-Forwarded-For", "unknown")]).client is None


def test_scheme_and_host_are_the_nearest_hops() -> None:
    chained = [("X-Forwarded-Proto", "http, https"), ("X-Forwarded-Host", "evil.example, gw.b")]
    origin = _resolve("10.0.0.9", chained)
    assert (origin.scheme, origin.host) == ("https", "gw.b")
    junk = [("X-Forwarded-Proto", "gopher"), ("X-Forwarded-Host", "a b/c")]
    assert _resolve("10.0.0.9", junk) == Origin("10.0.0.9", "http", "10.0.0.5:8080", True)


def test_forwarded_wins_over_x_forwarded() -> None:
    headers = [
        ("Forwarded", 'for="[2001:db8::1]:4711";proto=https;host=gw.example.com'),
        ("Forwarded", "for=10.0.0.7"),
        *XFF,
    ]
    origin = _resolve("::1", headers)
    assert origin.client == "2001:db8::1"
    assert (origin.scheme, origin.host) == ("http", "10.0.0.5:8080")  # nearest hop set neither
    one = _resolve("10.0.0.9", [("forwarded", "for=198.51.100.2;proto=https;host=a.example:8443")])
    assert one == Origin("198.51.100.2", "https", "a.example:8443", True)


@pytest.mark.parametrize(
    ("host", "hostname"),
    [("gw.example.com:443", "gw.example.com"), ("[::1]:80", "::1"), ("127.0.0.1", "127.0.0.1")],
)
def test_hostname_drops_the_port(host: str, hostname: str) -> None:
    assert Origin(None, "http", host).hostname == hostname


def test_bad_networks_are_named() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.300'"):
        parse_networks(["10.0.0.0/8", "10.0.0.300"])
