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
Plain http is for loopback too (`check_scheme`), unless the operator allows it: a signed body carries
call summaries and tool arguments, which should not cross a network in clear text.

The host is checked when the URL is registered, where a name that does not resolve (yet) is accepted, and
again right before every request, because what a name resolves to can change at any time. That second
check is the request's only lookup: `client` connects to the addresses it approved, so a name that
answers the check with a public address cannot send the connection to an internal one a moment later
(DNS rebinding). The URL, the Host header, TLS SNI and certificate verification keep the name. With
`egress_allow_private` nothing is refused, so nothing is pinned and httpx looks the name up itself.
"""

from __future__ import annotations

import ipaddress
import socket
import threading

import httpx

SETTING = "VQ_EGRESS_ALLOW_PRIVATE"
RESOLVE_TIMEOUT_S = 2.0  # a registration (a gateway request) waits no longer than this on a slow resolver
TIMEOUT_S = 5.0  # httpx's own default
CGNAT = ipaddress.ip_network("100.64.0.0/10")  # ipaddress calls it neither private nor global
LOOPBACK_NAMES = ("localhost",)

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


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback literal: plain http to it does not leave the host."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    address = literal(host)
    return address is not None and address.is_loopback


def check_scheme(scheme: str, host: str, *, allow_http: bool, setting: str) -> None:
    """ValueError for plain http to a host other than loopback, unless the operator allows it with
    `setting` (on-prem networks)."""
    if scheme == "http" and not (allow_http or is_loopback(host)):
        raise ValueError(f"must use https (plain http is allowed only to 127.0.0.1, localhost or ::1, unless "
                         f"the operator sets {setting}=true)")


def resolve(host: str, timeout_s: float = RESOLVE_TIMEOUT_S) -> list[Address]:
    """What the resolver says `host` names, each address once. Empty when the name does not resolve, or not
    within `timeout_s` (getaddrinfo has no timeout of its own). Tests replace it to play DNS."""
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


def check_host(host: str, *, allow_private: bool, timeout_s: float = RESOLVE_TIMEOUT_S) -> list[Address] | None:
    """The addresses a request to `host` may connect to, from one lookup (none for an IP literal). Blocked
    when any of them is internal and the operator has not allowed them; None when they are allowed, as
    then there is nothing to check. Empty when the name does not resolve, or not in time: a registration
    accepts that, and `client` connects nowhere. (A resolver an attacker slows down gains nothing.)"""
    if allow_private or not host:
        return None
    address = literal(host)
    found = [address] if address is not None else resolve(host, timeout_s)
    for candidate in found:
        kind = refused_class(candidate)
        if kind is None:
            continue
        where = host if address is not None else f"{host!r} resolves to {candidate}, which"
        article = "an" if kind[0] in "aeiou" else "a"
        raise Blocked(f"{where} is {article} {kind} address: tenants' webhooks and tools may not call internal "
                      f"addresses unless the operator sets {SETTING}=true")
    return found


def request_host(url: str) -> str:
    """The host exactly as httpx will send it to a resolver (a parser that read the URL differently would
    check one host and let the request go to another); ValueError for a URL httpx cannot send to at all."""
    try:
        return httpx.URL(url).raw_host.decode("ascii")
    except httpx.InvalidURL as exc:
        raise ValueError(f"{url[:100]!r} is not a URL a request can be sent to: {exc}") from exc


def client(url: str, *, allow_private: bool, timeout: float = TIMEOUT_S) -> httpx.Client:
    """An httpx client for requests to `url`'s host that follows no redirect and, unless the operator
    allows internal addresses, connects only to the addresses `check_host` approved just now (Blocked
    otherwise). The lookup may take up to `timeout`, as httpx's own would have."""
    try:
        host = request_host(url)
    except ValueError as exc:  # stored before registration parsed URLs as httpx does
        raise Blocked(str(exc)) from exc
    pinned = check_host(host, allow_private=allow_private, timeout_s=timeout)
    transport = None if pinned is None else PinnedTransport(host, pinned)
    return httpx.Client(transport=transport, timeout=timeout, follow_redirects=False)


class PinnedTransport(httpx.HTTPTransport):
    """Sends requests for `host` to one of `addresses` (tried in order, as the system's connect would), so no
    second lookup decides where the request goes. Only the connection's target changes: the Host header
    stays as the request was built, and TLS sends and verifies the name through httpcore's documented
    `sni_hostname` extension. (httpx uses no proxy from the environment with a transport it is given, as
    it should not here: a proxy would look the name up again.)"""

    def __init__(self, host: str, addresses: list[Address]) -> None:
        super().__init__()
        self.host, self.addresses = host, addresses

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        target = request.url.raw_host.decode("ascii")
        if target != self.host:  # another host: nothing checked it
            raise httpx.ConnectError(f"{target!r} was not checked; requests go to {self.host!r} only",
                                     request=request)
        if not self.addresses:
            raise httpx.ConnectError(f"{self.host!r} does not resolve", request=request)
        for address in self.addresses[:-1]:
            try:
                return super().handle_request(self.at(request, address))
            except (httpx.ConnectError, httpx.ConnectTimeout):
                continue  # nothing was sent: the next address may answer
        return super().handle_request(self.at(request, self.addresses[-1]))

    def at(self, request: httpx.Request, address: Address) -> httpx.Request:
        """`request` with its connection's target `address`, everything the server sees unchanged."""
        return httpx.Request(request.method, request.url.copy_with(host=str(address)), headers=request.headers,
                             stream=request.stream, extensions={**request.extensions, "sni_hostname": self.host})
