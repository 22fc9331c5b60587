"""shared.egress: which addresses tenants' webhooks and tools may reach, names resolved by the real
resolver, and the `egress_allow_private` setting that lets internal addresses through."""

from __future__ import annotations

import ipaddress
import re

import pytest

from shared import egress
from shared.config import CommonSettings

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


@pytest.mark.parametrize("text", list(CLASSES))
def test_addresses_are_classified(text: str) -> None:
    assert egress.refused_class(ipaddress.ip_address(text)) == CLASSES[text]


@pytest.mark.parametrize("text", [a for a, kind in CLASSES.items() if kind is not None])
def test_an_internal_literal_is_blocked_naming_its_class_and_the_setting(text: str) -> None:
    host = f"[{text}]" if ":" in text else text
    with pytest.raises(egress.Blocked) as caught:
        egress.check_url(f"https://{host}:8443/latest/meta-data/", allow_private=False)
    message = str(caught.value)
    assert message.startswith(f"{text} is a") and f"{CLASSES[text]} address" in message
    assert "VQ_EGRESS_ALLOW_PRIVATE=true" in message
    egress.check_url(f"https://{host}:8443/latest/meta-data/", allow_private=True)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/t", "http://localhost/t", "http://[::1]:9/t",
                                 "https://8.8.8.8/t", "https://[2001:4860:4860::8888]/t"])
def test_loopback_and_public_addresses_pass(url: str) -> None:
    egress.check_url(url, allow_private=False)


@pytest.mark.parametrize("host", ["2852039166", "0xa9fea9fe", "169.254.43518", "0251.0376.0251.0376"])
def test_a_name_the_resolver_turns_into_an_internal_address_is_blocked(host: str) -> None:
    # Not IP literals to ipaddress, but getaddrinfo (and so httpx) reads them as 169.254.169.254.
    expected = re.escape(f"'{host}' resolves to 169.254.169.254, which is a link-local address")
    with pytest.raises(egress.Blocked, match=f"^{expected}"):
        egress.check_url(f"http://{host}/latest/meta-data/", allow_private=False)
    egress.check_url(f"http://{host}/latest/meta-data/", allow_private=True)


def test_names_are_resolved_and_a_name_that_does_not_resolve_passes() -> None:
    assert set(egress.resolve("localhost")) <= {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    assert egress.resolve("localhost")
    assert egress.resolve("no-such-host.invalid") == []
    egress.check_url("https://no-such-host.invalid/hook", allow_private=False)  # checked again when sent


def test_the_setting_is_off_unless_the_operator_turns_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VQ_EGRESS_ALLOW_PRIVATE", raising=False)
    assert CommonSettings().egress_allow_private is False
    monkeypatch.setenv(egress.SETTING, "true")
    assert CommonSettings().egress_allow_private is True
