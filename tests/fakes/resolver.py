"""A stand-in for DNS: `shared.egress.resolve` answering from a table and counting its lookups, so a test
can point a made-up name at a local server, or at an internal address, without touching sockets. httpx
never sees these names resolve: a request to one arrives only if it connects where egress checked.

    dns = install(monkeypatch, {"receiver.test": ["127.0.0.1"]})
    ...
    assert dns.lookups == ["receiver.test"]
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import pytest

from shared import egress


@dataclass
class FakeDNS:
    table: dict[str, list[str]]
    lookups: list[str] = field(default_factory=list)

    def __call__(self, host: str, timeout_s: float = egress.RESOLVE_TIMEOUT_S) -> list[egress.Address]:
        self.lookups.append(host)
        return [ipaddress.ip_address(a) for a in self.table.get(host, [])]


def install(monkeypatch: pytest.MonkeyPatch, table: dict[str, list[str]]) -> FakeDNS:
    dns = FakeDNS(dict(table))
    monkeypatch.setattr(egress, "resolve", dns)
    return dns
