"""Which hosts Clarion may connect to on a tenant's behalf: publicly routable ones only.

Account holders give Clarion URLs and hosts (delivery callback URLs, web-push endpoints, a
credential's ProviderUrl or SMTP/SMPP Host). Without a check, any tenant could make Clarion's
workers connect into the operator's own network: a database on 127.0.0.1, an admin panel on
10.0.0.5, the cloud metadata service on 169.254.169.254 (server-side request forgery).

The policy: a destination is refused when *any* address its host resolves to is not globally
routable, unless the operator allows private destinations (`CLARION_ALLOW_PRIVATE_DESTINATIONS`,
on under `clarion serve --sandbox`) or the networks it is in (`CLARION_ALLOWED_PRIVATE_NETWORKS`,
e.g. the company's own SMTP relay at 10.0.0.25/32). Refusing on any address, rather than
connecting to the public ones, keeps one answer for a host across transports and DNS answers,
and names the private address so the tenant can fix their DNS.

Checks are made on the addresses actually connected to, after resolution (clarion.channels
http1, http2, email, smpp), so DNS rebinding — a public answer at validation time and a private
one at connect time — cannot slip past. The API additionally rejects what is private without
any DNS (`url_problem`, `host_problem`): literal non-global IPs and `localhost`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SETTING = "CLARION_ALLOW_PRIVATE_DESTINATIONS"
NETWORKS_SETTING = "CLARION_ALLOWED_PRIVATE_NETWORKS"
# `Result.error_code` of a delivery refused by the policy.
ERROR_CODE = "DestinationNotAllowed"

_CLOUD_METADATA = ipaddress.IPv4Address("169.254.169.254")
_SHARED_ADDRESS_SPACE = ipaddress.IPv4Network("100.64.0.0/10")  # RFC 6598, carrier-grade NAT
_RFC1918 = tuple(
    ipaddress.IPv4Network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
# RFC 6052 well-known NAT64 prefix: a NAT64 gateway in the operator's network turns
# 64:ff9b::10.0.0.5 into 10.0.0.5, so the embedded IPv4 address is what counts.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
# Digits, hex digits, `x` and dots only: what a resolver may read as a legacy IPv4 spelling
# (`127.1`, `0x7f.1`, `2130706433`).
_NUMERIC_HOST = re.compile(r"[0-9][0-9a-fx.]*")


class DestinationNotAllowedError(Exception):
    """A host resolved to an address the policy refuses; the message names both and the
    setting that would allow it. Deliberately not an OSError: it must not be mistaken for a
    network fault worth retrying."""

    code = ERROR_CODE

    def __init__(self, *, host: str, address: str, reason: str) -> None:
        self.host = host
        self.address = address
        self.reason = reason
        where = address if host == address else f"{host} (resolved to {address})"
        super().__init__(
            f"Clarion does not connect to {where}: {reason}. Only publicly routable "
            f"destinations are allowed unless the operator sets {SETTING}=true"
        )


def refusal(address: IPAddress) -> str | None:
    """Why `address` is no public destination (a phrase such as "a loopback address"), or None.

    `ipaddress.is_global` alone is not enough: it calls multicast (224.0.0.0/4, ff0e::/16),
    site-local fec0::/10 and the NAT64 and 6to4 spellings of private IPv4 addresses global.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = refusal(embedded)
            return None if reason is None else f"{reason} ({embedded}) in IPv6 form"
        if address.is_site_local:
            return "a site-local address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address == _CLOUD_METADATA:
        return "the cloud metadata service's link-local address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv4Address):
        if address in _SHARED_ADDRESS_SPACE:
            return "a carrier-grade NAT address (100.64.0.0/10)"
        if any(address in net for net in _RFC1918):
            return "a private address (RFC 1918)"
    elif address in ipaddress.IPv6Network("fc00::/7"):
        return "a unique-local address (fc00::/7)"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private or not address.is_global:
        return "a special-purpose address that is not globally routable"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: IPv4-mapped, IPv4-compatible (::a.b.c.d),
    NAT64 or 6to4."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or (int(address) >> 32 == 0 and int(address) > 0xFFFF):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def literal_address(host: str) -> IPAddress | None:
    """The address `host` spells out without DNS (`[::1]`, `10.0.0.5`, `127.1`), else None."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host):
        try:  # the legacy spellings getaddrinfo still accepts
            return ipaddress.IPv4Address(socket.inet_aton(host.rstrip(".")))
        except OSError:
            return None
    return None


@dataclass(frozen=True, slots=True)
class DestinationPolicy:
    """Whether tenant-given destinations may be private; one per process, passed down from the
    composition root (clarion.cli) to the API and the channels."""

    allow_private: bool = False
    # Private networks allowed all the same (an internal SMTP relay): checked, but not refused.
    allowed_networks: tuple[IPNetwork, ...] = ()

    def check(self, host: str, addresses: Iterable[str]) -> None:
        """Raise DestinationNotAllowedError if any of `host`'s `addresses` is refused."""
        if self.allow_private:
            return
        for text in addresses:
            address = ipaddress.ip_address(text)
            reason = self._refusal(address)
            if reason is not None:
                raise DestinationNotAllowedError(host=host, address=str(address), reason=reason)

    def _refusal(self, address: IPAddress) -> str | None:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
        candidates = [address]
        if isinstance(address, ipaddress.IPv6Address) and (v4 := _embedded_ipv4(address)):
            candidates.append(v4)
        if any(
            candidate in network
            for candidate in candidates
            for network in self.allowed_networks
            if candidate.version == network.version
        ):
            return None
        return refusal(address)

    async def resolve(self, host: str, port: int) -> list[str]:
        """`host`'s addresses, in the resolver's order, once every one of them is checked:
        connect to these, never to `host` again (a second lookup could answer differently).

        Raises OSError (socket.gaierror) when `host` does not resolve.
        """
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise OSError(f"{host} has no addresses")
        self.check(host, addresses)
        return addresses

    def host_problem(self, host: str | None) -> str | None:
        """What is wrong with `host` as a destination, as far as can be known without DNS, to
        show a tenant (API validation); None when nothing is, or the policy allows it."""
        if self.allow_private or not host:
            return None
        name = host.strip("[]").rstrip(".").lower()
        if name == "localhost" or name.endswith(".localhost"):  # RFC 6761: always loopback
            if self._refusal(_LOOPBACK) is None:
                return None
            return f"{host} is this server itself. {_ADVICE}"
        address = literal_address(name)
        reason = None if address is None else self._refusal(address)
        if reason is None:
            return None
        return f"{host} is {reason}. {_ADVICE}"

    def url_problem(self, url: str | None) -> str | None:
        """`host_problem` of a URL's host."""
        if not url:
            return None
        try:
            host = urlsplit(url).hostname
        except ValueError:
            return None
        return self.host_problem(host)


_ADVICE = (
    "Clarion connects only to publicly routable hosts: give a public host name or address "
    f"(the operator can allow private destinations with {SETTING}=true)"
)

# Library default for code that builds channels, workers or the app directly (tests, benches,
# the sandbox's own emulator channels); `clarion serve` and `clarion worker` apply the setting.
PERMISSIVE = DestinationPolicy(allow_private=True)
