"""The destination policy: which addresses tenants' URLs and hosts may resolve to, what the API
can refuse without DNS, and the settings that relax it."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest

from clarion import config
from clarion.config import ConfigError
from clarion.destinations import (
    PERMISSIVE,
    DestinationNotAllowedError,
    DestinationPolicy,
    literal_address,
    refusal,
)

DENY = DestinationPolicy()

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    ("10.0.0.5", "private address (RFC 1918)"),
    ("172.16.0.1", "private address (RFC 1918)"),
    ("172.31.255.255", "private address (RFC 1918)"),
    ("192.168.1.1", "private address (RFC 1918)"),
    ("169.254.169.254", "cloud metadata"),
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("fe80::1%2", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"),
    ("fec0::1", "site-local"),
    ("::ffff:127.0.0.1", "loopback address (127.0.0.1) in IPv6 form"),
    ("::ffff:10.0.0.5", "RFC 1918) (10.0.0.5) in IPv6 form"),
    ("::ffff:169.254.169.254", "cloud metadata"),
    ("::127.0.0.1", "loopback address (127.0.0.1) in IPv6 form"),
    ("64:ff9b::10.0.0.5", "(10.0.0.5) in IPv6 form"),
    ("2002:0a00:0005::1", "(10.0.0.5) in IPv6 form"),
    ("0.0.0.0", "unspecified"),  # noqa: S104 - an address to refuse, not to bind
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("0.1.2.3", "not globally routable"),
    ("192.0.2.1", "not globally routable"),  # documentation
    ("198.18.0.1", "not globally routable"),  # benchmarking
    ("2001:db8::1", "not globally routable"),  # documentation
]
ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "17.253.144.10",  # Apple
    "142.250.74.106",  # Google
    "172.32.0.1",  # just outside 172.16/12
    "100.128.0.1",  # just outside 100.64/10
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200a",
    "::ffff:8.8.8.8",
    "64:ff9b::8.8.8.8",  # NAT64 of a public address
]


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_non_global_addresses_are_refused_with_their_reason(address: str, reason: str) -> None:
    found = refusal(ipaddress.ip_address(address))
    assert found is not None
    assert reason in found
    with pytest.raises(DestinationNotAllowedError) as raised:
        DENY.check("example.com", [address])
    assert raised.value.code == "DestinationNotAllowed"
    assert raised.value.host == "example.com"


@pytest.mark.parametrize("address", ALLOWED)
def test_globally_routable_addresses_are_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None
    DENY.check("example.com", [address])


def test_one_private_address_among_public_ones_refuses_the_host() -> None:
    with pytest.raises(DestinationNotAllowedError) as raised:
        DENY.check("mixed.example.com", ["8.8.8.8", "10.1.2.3", "1.1.1.1"])
    message = str(raised.value)
    assert "mixed.example.com (resolved to 10.1.2.3)" in message
    assert "private address (RFC 1918)" in message
    assert "CLARION_ALLOW_PRIVATE_DESTINATIONS=true" in message


def test_the_permissive_policy_and_allowed_networks_let_private_addresses_through() -> None:
    PERMISSIVE.check("db", ["127.0.0.1", "10.0.0.5", "169.254.169.254"])
    relay = DestinationPolicy(allowed_networks=(ipaddress.ip_network("10.0.0.25/32"),))
    relay.check("relay.internal", ["10.0.0.25", "::ffff:10.0.0.25"])
    with pytest.raises(DestinationNotAllowedError):
        relay.check("other.internal", ["10.0.0.26"])


async def test_a_host_name_is_checked_after_resolution() -> None:
    """`localhost` resolves to a loopback address: refused on the DNS path too."""
    with pytest.raises(DestinationNotAllowedError) as raised:
        await DENY.resolve("localhost", 443)
    assert raised.value.host == "localhost"
    assert ipaddress.ip_address(raised.value.address).is_loopback
    assert await PERMISSIVE.resolve("127.0.0.1", 443) == ["127.0.0.1"]
    with pytest.raises(socket.gaierror):
        await DENY.resolve("no-such-host.invalid", 443)


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("127.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("10.0.0.5.", "10.0.0.5"),
    ],
)
def test_literal_addresses_are_read_in_every_spelling_a_resolver_accepts(
    host: str, address: str
) -> None:
    assert literal_address(host.rstrip(".")) == ipaddress.ip_address(address)


@pytest.mark.parametrize("host", ["example.com", "1e100.net", "123.example", "api.push.apple.com"])
def test_names_are_not_literal_addresses(host: str) -> None:
    assert literal_address(host) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:5432/",
        "https://LOCALHOST/hook",
        "http://localhost./",
        "http://api.localhost/",
        "http://[::1]:8080/",
        "http://[::ffff:10.0.0.5]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://2130706433/",
        "http://100.64.1.1/",
    ],
)
def test_the_api_check_refuses_what_is_private_without_dns(url: str) -> None:
    problem = DENY.url_problem(url)
    assert problem is not None
    assert "give a public host name or address" in problem
    assert "CLARION_ALLOW_PRIVATE_DESTINATIONS=true" in problem
    assert PERMISSIVE.url_problem(url) is None


@pytest.mark.parametrize(
    "url", ["https://hooks.example.com/notify", "https://8.8.8.8/", None, "", "not a url"]
)
def test_the_api_check_passes_names_and_public_addresses(url: str | None) -> None:
    assert DENY.url_problem(url) is None


def test_localhost_is_allowed_at_the_api_when_loopback_is_an_allowed_network() -> None:
    loopback = DestinationPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))
    assert loopback.host_problem("localhost") is None
    assert loopback.host_problem("10.0.0.5") is not None


# --- settings --------------------------------------------------------------------------------


def settings(tmp_path: Path, **env: str) -> config.Settings:
    return config.load({"CLARION_DATA_DIR": str(tmp_path), **env})


@pytest.mark.parametrize("text", ["1", "true", "yes", "TRUE", "Yes"])
def test_allow_private_destinations_accepts_yes(tmp_path: Path, text: str) -> None:
    loaded = settings(tmp_path, CLARION_ALLOW_PRIVATE_DESTINATIONS=text)
    assert loaded.allow_private_destinations is True
    assert loaded.destinations_allowed(sandbox=False)


@pytest.mark.parametrize("text", ["0", "false", "no", "False"])
def test_allow_private_destinations_accepts_no_even_in_the_sandbox(
    tmp_path: Path, text: str
) -> None:
    loaded = settings(tmp_path, CLARION_ALLOW_PRIVATE_DESTINATIONS=text)
    assert loaded.allow_private_destinations is False
    assert not loaded.destinations_allowed(sandbox=True)


def test_private_destinations_are_refused_by_default_but_in_the_sandbox(tmp_path: Path) -> None:
    loaded = settings(tmp_path)
    assert loaded.allow_private_destinations is None
    assert not loaded.destinations_allowed(sandbox=False)
    assert loaded.destinations_allowed(sandbox=True)


@pytest.mark.parametrize("text", ["on", "2", "ture", "y"])
def test_allow_private_destinations_refuses_anything_else(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="CLARION_ALLOW_PRIVATE_DESTINATIONS must be one of"):
        settings(tmp_path, CLARION_ALLOW_PRIVATE_DESTINATIONS=text)


def test_allowed_private_networks_are_parsed_strictly(tmp_path: Path) -> None:
    loaded = settings(tmp_path, CLARION_ALLOWED_PRIVATE_NETWORKS="10.0.0.25/32, fd00:1::/64")
    assert loaded.allowed_private_networks == (
        ipaddress.ip_network("10.0.0.25/32"),
        ipaddress.ip_network("fd00:1::/64"),
    )
    with pytest.raises(ConfigError, match="CLARION_ALLOWED_PRIVATE_NETWORKS"):
        settings(tmp_path, CLARION_ALLOWED_PRIVATE_NETWORKS="10.0.0.1/8")
    with pytest.raises(ConfigError, match="CLARION_ALLOWED_PRIVATE_NETWORKS"):
        settings(tmp_path, CLARION_ALLOWED_PRIVATE_NETWORKS="relay.internal")
