"""Where tenants' URLs may point: the one outbound-request policy of webhooks and custom tools.

Tenants register URLs that our gateway and workers then call from inside the deployment, so a URL at an
internal address would let any API-key holder reach what only we should: the cloud metadata service at
169.254.169.254, Redis, the LLM server, other hosts of the private network. Unless the operator sets
`egress_allow_private` (`VQ_EGRESS_ALLOW_PRIVATE`), an address that is private, link-local, CGNAT shared,
unspecified, multicast, reserved or otherwise not globally routable is refused, also when it is wrapped
in an IPv4-mapped IPv6 address.

Loopback stays allowed, as it always was for tools: a URL at 127.0.0.1 reaches only the host the caller
runs on, where a tenant's receiver may sit in a sidecar, and where the test suite's receivers listen. The
price is that services on the workers' own loopback stay reachable (a single-host deployment's LLM server);
an operator serving untrusted tenants there should keep those off the workers' hosts or firewall them.

`check_url` is called twice: when the URL is registered, where a name that does not resolve (yet) is
accepted, and again right before every request, because what a name resolves to can change at any time.
DNS rebinding between that last check and httpx's own lookup remains possible: closing it would need a
custom transport that connects to the address we checked. Left alone until a deployment needs it.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from urllib.parse import urlsplit

SETTING = "VQ_EGRESS_ALLOW_PRIVATE"
RESOLVE_TIMEOUT_S = 2.0  # a registration (a gateway request) waits no longer than this on a slow resolver
CGNAT = ipaddress.ip_network("100.64.0.0/10")  # ipaddress calls it neither private nor global

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Blocked(ValueError):
    """The URL's host is, or resolves to, an address the policy refuses; the message says which and why."""


def refused_class(address: Address) -> str | None:
    """What kind of internal address this is ("link-local", "private", ...), or None when it may be called."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:10.0.0.1 connects to 10.0.0.1
    if address.is_loopback:
        return None
    # Narrower classes first: 169.254/16, 0.0.0.0 and 240/4 are "private" to ipaddress as well.
    for kind, hit in (("unspecified", address.is_unspecified), ("link-local", address.is_link_local),
                      ("multicast", address.is_multicast), ("shared (CGNAT)", address in CGNAT),
                      ("reserved", address.is_reserved), ("private", address.is_private),
                      ("special-purpose", not address.is_global)):
        if hit:
            return kind
    return None


def literal(host: str) -> Address | None:
    """The address when `host` is an IP literal (brackets or not), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def resolve(host: str, timeout_s: float = RESOLVE_TIMEOUT_S) -> list[Address]:
    """What the resolver says `host` names, each address once. Empty when the name does not resolve, or not
    within `timeout_s` (getaddrinfo has no timeout of its own)."""
    found: list[Address] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            return
        # A scoped IPv6 answer ("fe80::1%eth0") is parsed without its zone.
        found.extend(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos)

    worker = threading.Thread(target=lookup, name="egress-resolve", daemon=True)
    worker.start()
    worker.join(timeout_s)
    return [] if worker.is_alive() else list(dict.fromkeys(found))


def check_host(host: str, *, allow_private: bool) -> None:
    """Blocked when `host` is, or resolves to, an internal address and the operator has not allowed them.
    A name that does not resolve, or not in time, passes: its request then fails on its own, or meets this
    check again when it is sent. (A resolver an attacker slows down is no worse than one that rebinds.)"""
    if allow_private:
        return
    address = literal(host)
    for candidate in [address] if address is not None else resolve(host):
        kind = refused_class(candidate)
        if kind is None:
            continue
        where = host if address is not None else f"{host!r} resolves to {candidate}, which"
        article = "an" if kind[0] in "aeiou" else "a"
        raise Blocked(f"{where} is {article} {kind} address: tenants' webhooks and tools may not call internal "
                      f"addresses unless the operator sets {SETTING}=true")


def check_url(url: str, *, allow_private: bool) -> None:
    """`check_host` for a URL's host (a URL without one is left to the caller's own checks)."""
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:
        return
    if host:
        check_host(host, allow_private=allow_private)
