"""shared.egress: which addresses tenants' webhooks and tools may reach, names resolved by the real
resolver, and the `egress_allow_private` setting that lets internal addresses through. Its client connects
where the check looked (made-up names played by `tests.fakes.resolver`, a real local receiver behind them),
over https too, still verifying the certificate against the name."""

from __future__ import annotations

import ipaddress
import re
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from shared import egress, tools, webhooks
from shared.config import CommonSettings
from tests.fakes.resolver import install
from tests.webhook_receiver import Answer, Receiver, receiving

CLASSES: dict[str, str | None] = {
    "169.254.169.254": "link-local",  # cloud metadata
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "172.31.255.255": "private",
    "172.32.0.1": None,  # just past 172.16/12: public
    "192.168.0.1": "private",
    "100.64.0.1": "shared (CGNAT)",
    "100.127.255.254": "shared (CGNAT)",
    "100.128.0.1": None,
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "224.0.0.1": "multicast",  # Python 3.11 calls this global
    "ff02::1": "multicast",
    "240.0.0.1": "reserved",
    "198.18.0.1": "private",  # benchmarking
    "2001:db8::1": "private",  # documentation
    "::ffff:169.254.169.254": "link-local",
    "::ffff:10.0.0.5": "private",
    "::ffff:8.8.8.8": None,  # mapped, it is 8.8.8.8 (ipaddress calls the IPv6 form reserved)
    "::ffff:127.0.0.1": None,
    "fe80::1": "link-local",
    "fd00::1": "private",
    "127.0.0.1": None,
    "127.8.9.10": None,
    "::1": None,
    "8.8.8.8": None,
    "2001:4860:4860::8888": None,
}


def check(url: str, *, allow_private: bool) -> None:
    """What a webhook or tool request does first: its client is made, which checks the URL as httpx parses it."""
    egress.client(url, allow_private=allow_private).close()


@pytest.mark.parametrize("text", list(CLASSES))
def test_addresses_are_classified(text: str) -> None:
    assert egress.refused_class(ipaddress.ip_address(text)) == CLASSES[text]


@pytest.mark.parametrize("text", [a for a, kind in CLASSES.items() if kind is not None])
def test_an_internal_literal_is_blocked_naming_its_class_and_the_setting(text: str) -> None:
    host = f"[{text}]" if ":" in text else text
    with pytest.raises(egress.Blocked) as caught:
        check(f"https://{host}:8443/latest/meta-data/", allow_private=False)
    message = str(caught.value)
    assert message.startswith(f"{text} is a") and f"{CLASSES[text]} address" in message
    assert "VQ_EGRESS_ALLOW_PRIVATE=true" in message
    check(f"https://{host}:8443/latest/meta-data/", allow_private=True)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/t", "http://localhost/t", "http://[::1]:9/t",
                                 "https://8.8.8.8/t", "https://[2001:4860:4860::8888]/t"])
def test_loopback_and_public_addresses_pass(url: str) -> None:
    check(url, allow_private=False)


OCTAL = "0251.0376.0251.0376"


@pytest.mark.parametrize("host", ["2852039166", "0xa9fea9fe", "169.254.43518", OCTAL])
def test_a_name_the_resolver_turns_into_an_internal_address_is_blocked(host: str) -> None:
    # Not IP literals to ipaddress, but getaddrinfo (and so httpx) reads them as 169.254.169.254.
    expected = re.escape(f"'{host}' resolves to 169.254.169.254, which is a link-local address")
    with pytest.raises(egress.Blocked, match=f"^{expected}"):
        egress.check_host(host, allow_private=False)
    egress.check_host(host, allow_private=True)
    if host != OCTAL:  # httpx cannot send to that one at all (below)
        with pytest.raises(egress.Blocked, match=f"^{expected}"):
            check(f"http://{host}/latest/meta-data/", allow_private=False)
        check(f"http://{host}/latest/meta-data/", allow_private=True)


def test_a_url_httpx_cannot_send_to_is_refused_when_registered_and_when_called() -> None:
    url = f"https://{OCTAL}/hook"  # httpx reads dotted digits as IPv4, and octal parts are not
    for register in (webhooks.check_url, tools.check_url):
        with pytest.raises(ValueError, match="is not a URL a request can be sent to"):
            register(url, allow_private=True)
    with pytest.raises(egress.Blocked, match="is not a URL a request can be sent to"):
        check(url, allow_private=True)


def test_names_are_resolved_and_a_name_that_does_not_resolve_passes() -> None:
    assert set(egress.resolve("localhost")) <= {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    assert egress.resolve("localhost")
    assert egress.resolve("no-such-host.invalid") == []
    check("https://no-such-host.invalid/hook", allow_private=False)  # checked again when sent


def test_the_setting_is_off_unless_the_operator_turns_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VQ_EGRESS_ALLOW_PRIVATE", raising=False)
    assert CommonSettings().egress_allow_private is False
    monkeypatch.setenv(egress.SETTING, "true")
    assert CommonSettings().egress_allow_private is True


# ---- the client: one lookup, and the connection goes where it pointed --------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


def at(receiver: Receiver, host: str) -> str:
    """The receiver's URL under another host name (the fake DNS decides where that goes)."""
    return receiver.url.replace("127.0.0.1", host)


def post(url: str, allow_private: bool = False) -> httpx.Response:
    with egress.client(url, allow_private=allow_private) as client:
        return client.post(url, content=b"{}")


def test_a_name_is_looked_up_once_and_connected_to_where_it_pointed_then(monkeypatch: pytest.MonkeyPatch,
                                                                         receiver: Receiver) -> None:
    dns = install(monkeypatch, {"receiver.test": ["127.0.0.1"]})
    url = at(receiver, "receiver.test")
    with egress.client(url, allow_private=False, timeout=0.5) as client:
        assert dns.lookups == ["receiver.test"] and client.timeout.read == 0.5
        dns.table["receiver.test"] = ["169.254.169.254"]  # it rebinds: a second lookup would go there
        answers = [client.post(url, content=b"{}").status_code for _ in range(2)]
    assert answers == [200, 200] and dns.lookups == ["receiver.test"]
    port = urlsplit(url).port
    assert [(r.path, r.headers["host"]) for r in receiver.requests] == [("/hooks", f"receiver.test:{port}")] * 2


@pytest.mark.parametrize("answer", [["10.0.0.5"], ["127.0.0.1", "169.254.169.254"], ["::ffff:192.168.1.1"]])
def test_a_name_that_resolves_to_any_internal_address_is_refused_before_connecting(
        monkeypatch: pytest.MonkeyPatch, receiver: Receiver, answer: list[str]) -> None:
    dns = install(monkeypatch, {"receiver.test": answer})
    with pytest.raises(egress.Blocked, match=r"^'receiver\.test' resolves to \S+, which is an? [a-z-]+ address"):
        egress.client(at(receiver, "receiver.test"), allow_private=False)
    assert dns.lookups == ["receiver.test"] and receiver.requests == []
    assert post(at(receiver, "localhost"), allow_private=True).status_code == 200  # allowed: not pinned
    assert dns.lookups == ["receiver.test"]  # and nothing looked up by egress


def test_the_checked_addresses_are_tried_in_their_order(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    # Nothing listens on 127.0.0.2 at the receiver's port (it is bound to 127.0.0.1): refused, then the next.
    dns = install(monkeypatch, {"receiver.test": ["127.0.0.2", "127.0.0.1"]})
    assert post(at(receiver, "receiver.test")).status_code == 200
    assert len(receiver.requests) == 1 and dns.lookups == ["receiver.test"]


def test_a_name_that_does_not_resolve_is_connected_nowhere(monkeypatch: pytest.MonkeyPatch,
                                                           receiver: Receiver) -> None:
    dns = install(monkeypatch, {})
    with pytest.raises(httpx.ConnectError, match=r"^'nowhere\.test' does not resolve$"):
        post(at(receiver, "nowhere.test"))
    assert dns.lookups == ["nowhere.test"] and receiver.requests == []


def test_a_client_sends_nothing_to_a_host_it_did_not_check(monkeypatch: pytest.MonkeyPatch,
                                                           receiver: Receiver) -> None:
    install(monkeypatch, {"receiver.test": ["127.0.0.1"]})
    with (egress.client(at(receiver, "receiver.test"), allow_private=False) as client,
          pytest.raises(httpx.ConnectError, match=r"'127\.0\.0\.1' was not checked")):
        client.post(receiver.url, content=b"{}")
    assert receiver.requests == []


def test_redirects_are_not_followed(receiver: Receiver) -> None:
    receiver.plan(then=Answer(307, {"Location": at(receiver, "localhost") + "/elsewhere"}))
    assert post(receiver.url).status_code == 307 and len(receiver.requests) == 1


# ---- https: the connection is pinned, the name is what TLS sends and verifies -------------------------


def openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA (ca.pem) and a server certificate it signed for receiver.test alone (no IP address)."""
    if shutil.which("openssl") is None:
        pytest.skip("making a test certificate needs the openssl command")
    where = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(where, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj",
            "/CN=voicequeue test CA", "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
            "keyUsage=critical,keyCertSign")
    openssl(where, "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=receiver.test")
    (where / "server.ext").write_text("subjectAltName=DNS:receiver.test\nbasicConstraints=CA:FALSE\n"
                                      "extendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid\n")
    openssl(where, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    return where


def test_https_to_a_pinned_name_verifies_the_certificate_against_the_name(
        monkeypatch: pytest.MonkeyPatch, certificates: Path) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates / "server.pem", certificates / "server.key")
    sent_names: list[str | None] = []
    context.sni_callback = lambda _socket, name, _context: sent_names.append(name)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates / "ca.pem"))  # as an operator trusts a private CA
    dns = install(monkeypatch, {"receiver.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    with receiving(tls=context) as receiver:
        url = at(receiver, "receiver.test")
        assert post(url).status_code == 200
        (got,) = receiver.requests
        assert got.headers["host"] == f"receiver.test:{urlsplit(url).port}" and sent_names == ["receiver.test"]
        # The same server, reached the same way, under a name its certificate does not carry, or at its
        # address: the handshake fails, so the success above was the name's.
        for other in (at(receiver, "other.test"), receiver.url):
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                post(other)
        assert len(receiver.requests) == 1 and "other.test" in sent_names
        monkeypatch.delenv("SSL_CERT_FILE")  # the CA no longer trusted: the name alone does not pass
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            post(url)
    assert dns.lookups == ["receiver.test", "other.test", "receiver.test"]


@pytest.mark.parametrize(("scheme", "host", "allowed"), [
    ("https", "hooks.example.test", True), ("https", "8.8.8.8", True),
    ("http", "127.0.0.1", True), ("http", "127.8.9.10", True), ("http", "localhost", True),
    ("http", "LOCALHOST", True), ("http", "::1", True),
    ("http", "hooks.example.test", False), ("http", "8.8.8.8", False), ("http", "10.0.0.5", False),
    ("http", "localhost.example.test", False), ("http", "0.0.0.0", False),
])
def test_plain_http_is_for_loopback_unless_the_setting_allows_it(scheme: str, host: str, allowed: bool) -> None:
    if allowed:
        egress.check_scheme(scheme, host, allow_http=False, setting="VQ_X_ALLOW_HTTP")
    else:
        with pytest.raises(ValueError, match=r"^must use https \(.* unless the operator sets VQ_X_ALLOW_HTTP=true\)$"):
            egress.check_scheme(scheme, host, allow_http=False, setting="VQ_X_ALLOW_HTTP")
    egress.check_scheme(scheme, host, allow_http=True, setting="VQ_X_ALLOW_HTTP")  # the operator allows it
