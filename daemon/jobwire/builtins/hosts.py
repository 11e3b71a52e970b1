"""Where the ``http`` built-in may go: the host allow-list, the address check, Retry-After."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from email.utils import parsedate_to_datetime

from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 prefixes that carry (or once carried) an IPv4 address, or are not public though
# ``is_global`` says so: NAT64 (well-known and local-use), 6to4, Teredo, IPv4-compatible,
# site-local. Refused unless allow_addresses lists them, and then the IPv4 inside must pass.
_LAST_32_BITS = tuple(ipaddress.IPv6Network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "::/96"))
_EMBEDDING = (
    *_LAST_32_BITS,
    *(ipaddress.IPv6Network(n) for n in ("2002::/16", "2001::/32", "fec0::/10")),
)


class AddressRefused(OSError):
    """A name resolved only to addresses the policy refuses."""


class HostPolicy:
    """The config's allow-list of hosts, and of the non-public addresses a call may reach."""

    def __init__(self, hosts: Sequence[str], addresses: Sequence[str]) -> None:
        self._exact = {h for h in hosts if not h.startswith("*.")}
        self._suffixes = tuple(h[1:] for h in hosts if h.startswith("*."))  # ".example.org"
        self._networks = [ipaddress.ip_network(a, strict=False) for a in addresses]

    def host_allowed(self, host: str) -> bool:
        """Whether ``host`` is on the allow-list (``*.d`` matches names below d, not d)."""
        host = host.lower().rstrip(".").strip("[]")
        return host in self._exact or host.endswith(self._suffixes)

    def address_allowed(self, address: str) -> bool:
        """Public addresses always; loopback, private, link-local and the like only when
        ``allow_addresses`` covers them."""
        try:
            ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
            elif any(ip in net for net in _EMBEDDING):
                # 64:ff9b::7f00:1 reaches 127.0.0.1 through a NAT64 gateway, and so on.
                return self._listed(ip) and all(self._plain(v4) for v4 in _embedded_ipv4(ip))
        return self._plain(ip)

    def _listed(self, ip: IPAddress) -> bool:
        return any(ip in net for net in self._networks)

    def _plain(self, ip: IPAddress) -> bool:
        return self._listed(ip) or (ip.is_global and not ip.is_multicast)

    def refusal(self, url: URL) -> str | None:
        """Why ``url`` may not be called, or None when it may (its host is on the list and,
        for an IP literal, its address allowed; a name's addresses are checked when
        resolved)."""
        host = (url.host or "").lower()
        if not self.host_allowed(host):
            return f"host {host!r} is not in builtins.http.allow_hosts"
        if _is_ip(host) and not self.address_allowed(host.strip("[]")):
            return (
                f"address {host} is loopback, private or link-local: refused unless listed "
                "in builtins.http.allow_addresses"
            )
        return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an address of one of the ``_EMBEDDING`` prefixes leads to."""
    found: list[ipaddress.IPv4Address] = []
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)  # the server, and the client (de-obfuscated)
    if any(ip in net for net in _LAST_32_BITS):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))  # NAT64, IPv4-compatible
    return found


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def retry_after_seconds(value: str | None, most: float) -> float | None:
    """Seconds a ``Retry-After`` asks to wait (delta-seconds or an HTTP date), at most
    ``most``; None (the retry policy's backoff) without one, when it cannot be read, or
    when it asks for no wait."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() also takes "²", float() not
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
    if seconds <= 0:
        # "Now" or a date already past: the retry policy's backoff, not an instant retry
        # (which used every attempt up in a moment).
        return None
    return min(seconds, most)
