"""/v1/tools through a real gateway on a real Redis, with a real local HTTP server as the tenants' tool
endpoint: tools are stored per tenant, bad specs get a 4xx saying what was wrong and store nothing, one
tenant never sees another's tools, and `/test` checks the arguments then makes the real call. The
`voicequeue tools` CLI is run against the same gateway (it is only a client of these routes)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from services.gateway import keystore
from services.gateway.routes.tools import TEST_CALL_SLOTS
from shared import keys
from tests.conftest import running_redis
from tests.fakes.tool_server import ToolServer
from tests.stack import VENV_BIN, lone_gateway

MAX_TOOLS = 4
ORDER_SCHEMA: dict[str, Any] = {"type": "object", "required": ["order_id"],
                                "properties": {"order_id": {"type": "string", "pattern": "^[0-9]{4,10}$"}}}

Gateway = tuple[str, redis.Redis, dict[str, str], ToolServer]


def serving(tmp_path_factory: pytest.TempPathFactory, url: str, extra_env: dict[str, str] | None = None
            ) -> contextlib.AbstractContextManager[int]:
    """A gateway process on the Redis at `url` (at most 4 tools a tenant); yields its port."""
    env = {"VQ_TOOLS_MAX_PER_TENANT": str(MAX_TOOLS), **(extra_env or {})}
    return lone_gateway(tmp_path_factory.mktemp("tools-api"), url, env)


@pytest.fixture(scope="module")
def redis_at(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_redis(tmp_path_factory.mktemp("tools-api-redis")) as url:
        yield url


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, redis_at: str) -> Iterator[Gateway]:
    """A gateway alone on its own Redis (auth on, five tenants, at most 4 tools each), and a tool endpoint."""
    with ToolServer(slow_s=5.0) as server:
        conn = redis.Redis.from_url(redis_at)
        keys_ = {t: keystore.create(conn, f"shop-{t}")[0] for t in ("a", "b", "c", "d", "e")}
        try:
            with serving(tmp_path_factory, redis_at) as port:
                yield f"http://127.0.0.1:{port}", conn, keys_, server
        finally:
            conn.close()


@pytest.fixture(scope="module")
def open_gateway(tmp_path_factory: pytest.TempPathFactory, redis_at: str, gateway: Gateway) -> Iterator[Gateway]:
    """A second gateway on the same Redis, run by an operator who allows internal addresses (and plain http)."""
    allow = {"VQ_EGRESS_ALLOW_PRIVATE": "true", "VQ_TOOLS_ALLOW_HTTP": "true"}
    with serving(tmp_path_factory, redis_at, allow) as port:
        yield f"http://127.0.0.1:{port}", gateway[1], gateway[2], gateway[3]


def client(gateway: Gateway, tenant: str = "a") -> httpx.Client:
    return httpx.Client(base_url=gateway[0], headers={"Authorization": f"Bearer {gateway[2][tenant]}"}, timeout=30)


def spec(gateway: Gateway, **changes: Any) -> dict[str, Any]:
    base = {"name": "lookup_order", "description": "Find an order's status by its number.",
            "parameters": ORDER_SCHEMA, "url": gateway[3].url("/ok")}
    return {**base, **changes}


def names(c: httpx.Client) -> list[str]:
    r = c.get("/v1/tools")
    assert r.status_code == 200, r.text
    return [t["name"] for t in r.json()["tools"]]


def test_create_list_get_replace_delete(gateway: Gateway) -> None:
    conn = gateway[1]
    with client(gateway) as c:
        r = c.post("/v1/tools", json=spec(gateway, filler="Let me check that order."))
        assert r.status_code == 201, r.text
        made = r.json()
        assert made["name"] == "lookup_order" and made["parameters"] == ORDER_SCHEMA
        assert made["timeout_s"] == 5.0 and made["filler"] == "Let me check that order." and made["created_at"] > 0
        assert c.post("/v1/tools", json=spec(gateway, name="track_parcel")).status_code == 201
        assert names(c) == ["lookup_order", "track_parcel"]
        assert c.get("/v1/tools/lookup_order").json()["url"] == gateway[3].url("/ok")

        r = c.post("/v1/tools", json=spec(gateway, timeout_s=2, created_at=1))  # replaces; stamps are ours
        assert r.status_code == 201 and r.json()["timeout_s"] == 2 and r.json()["filler"] is None
        assert r.json()["created_at"] == made["created_at"]
        assert names(c) == ["lookup_order", "track_parcel"]
        stored = json.loads(conn.hget(keys.tools("shop-a"), "lookup_order") or b"{}")
        assert stored["timeout_s"] == 2 and stored["url"] == gateway[3].url("/ok")

        assert c.delete("/v1/tools/track_parcel").status_code == 204
        missing = c.get("/v1/tools/track_parcel")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "tool_not_found"
        assert c.delete("/v1/tools/track_parcel").status_code == 404
        assert names(c) == ["lookup_order"]
    assert conn.ttl(keys.tools("shop-a")) == -1  # kept until deleted


def test_tenants_do_not_see_each_others_tools(gateway: Gateway) -> None:
    with client(gateway, "a") as a, client(gateway, "b") as b:
        assert a.post("/v1/tools", json=spec(gateway, name="a_secret_tool")).status_code == 201
        assert b.get("/v1/tools/a_secret_tool").status_code == 404
        assert b.delete("/v1/tools/a_secret_tool").status_code == 404
        assert b.post("/v1/tools/a_secret_tool/test", json={"arguments": {"order_id": "1234"}}).status_code == 404
        assert "a_secret_tool" not in names(b)
        # The same name is B's own tool, apart from A's.
        assert b.post("/v1/tools", json=spec(gateway, name="a_secret_tool", timeout_s=9)).status_code == 201
        assert a.get("/v1/tools/a_secret_tool").json()["timeout_s"] == 5.0
        assert b.get("/v1/tools/a_secret_tool").json()["timeout_s"] == 9.0
    assert httpx.get(f"{gateway[0]}/v1/tools").status_code == 401


BAD: dict[str, tuple[dict[str, Any], int, str, str]] = {
    "malformed json": ({"content": b'{"name": "x", ', "headers": {"content-type": "application/json"}}, 400,
                       "malformed_json", "not valid JSON"),
    "empty body": ({"content": b"", "headers": {"content-type": "application/json"}}, 400, "empty_request",
                   "send the tool as JSON"),
    "not an object": ({"json": ["lookup_order"]}, 422, "invalid_tool", "must be a JSON object"),
    "bad schema": ({"json": {"parameters": {"type": "object", "properties": {"x": {"type": "strin"}}}}}, 422,
                   "invalid_parameters", "parameters: not a valid JSON Schema at properties/x/type"),
    "schema not of an object": ({"json": {"parameters": {"type": "string"}}}, 422, "invalid_parameters",
                                '"type": "object"'),
    "plain http": ({"json": {"url": "http://shop.example/order"}}, 422, "invalid_tool_url",
                   "url: must use https"),
    "metadata url": ({"json": {"url": "https://169.254.169.254/latest/meta-data/"}}, 422, "invalid_tool_url",
                     "url: 169.254.169.254 is a link-local address: tenants' webhooks and tools may not call "
                     "internal addresses unless the operator sets VQ_EGRESS_ALLOW_PRIVATE=true"),
    "private url": ({"json": {"url": "https://10.0.0.5/t"}}, 422, "invalid_tool_url",
                    "url: 10.0.0.5 is a private address"),
    "decimal metadata url": ({"json": {"url": "https://2852039166/t"}}, 422, "invalid_tool_url",
                             "url: '2852039166' resolves to 169.254.169.254, which is a link-local address"),
    "built-in name": ({"json": {"name": "transfer_to_human"}}, 422, "reserved_tool_name",
                      "name: 'transfer_to_human' is a built-in tool"),
    "bad name": ({"json": {"name": "look up order"}}, 422, "invalid_tool_name", "name: a tool name is 1-64"),
    "missing url": ({"json": {"url": None}}, 422, "invalid_tool_url", "missing field 'url'"),
    "timeout too long": ({"json": {"timeout_s": 120}}, 422, "invalid_tool", "timeout_s: Input should be less"),
    "unknown field": ({"json": {"method": "GET"}}, 422, "invalid_tool", "method: Extra inputs are not permitted"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_specs_are_refused_and_store_nothing(gateway: Gateway, case: str) -> None:
    request, status, code, message = BAD[case]
    if "json" in request and isinstance(request["json"], dict):
        changed = {**spec(gateway, name="refused_tool"), **request["json"]}
        request = {"json": {k: v for k, v in changed.items() if v is not None}}
    with client(gateway, "b") as c:
        before = names(c)
        r = c.post("/v1/tools", **request)
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code
        assert message in r.json()["error"]["message"], r.json()
        assert names(c) == before


def test_a_tenant_has_at_most_the_configured_number_of_tools(gateway: Gateway) -> None:
    with client(gateway, "c") as c:
        for n in range(MAX_TOOLS):
            assert c.post("/v1/tools", json=spec(gateway, name=f"tool_{n}")).status_code == 201
        r = c.post("/v1/tools", json=spec(gateway, name="one_too_many"))
        assert r.status_code == 409 and r.json()["error"]["code"] == "too_many_tools"
        assert f"at most {MAX_TOOLS} tools" in r.json()["error"]["message"]
        assert c.post("/v1/tools", json=spec(gateway, name="tool_0", timeout_s=3)).status_code == 201  # replacing
        assert len(names(c)) == MAX_TOOLS


def test_test_call_checks_arguments_then_calls_the_endpoint(gateway: Gateway) -> None:
    server = gateway[3]
    with client(gateway, "a") as c:
        assert c.post("/v1/tools", json=spec(gateway)).status_code == 201
        r = c.post("/v1/tools/lookup_order/test", json={"arguments": {"order_id": "123456"}})
        assert r.status_code == 200, r.text
        outcome = r.json()
        assert outcome["ok"] and outcome["status"] == 200 and outcome["error"] is None
        assert outcome["result"] == {"echo": {"order_id": "123456"}, "status": "shipped"}
        got = server.requests[-1]
        sent = json.loads(got.body)
        assert sent["tenant"] == "shop-a" and sent["tool"] == "lookup_order" and sent["call_id"].startswith("test_")
        assert got.headers["x-voicequeue-tool"] == "lookup_order"

        calls_before = len(server.requests)
        r = c.post("/v1/tools/lookup_order/test", json={"arguments": {"order_id": "12ab"}})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_arguments"
        assert "$.order_id: '12ab' does not match '^[0-9]{4,10}$'" in r.json()["error"]["message"]
        r = c.post("/v1/tools/lookup_order/test", json={})
        assert r.status_code == 422 and "'order_id' is a required property" in r.json()["error"]["message"]
        assert len(server.requests) == calls_before  # invalid arguments never reach the endpoint

        assert c.post("/v1/tools", json=spec(gateway, name="broken", url=server.url("/fail"))).status_code == 201
        r = c.post("/v1/tools/broken/test", json={"arguments": {"order_id": "1234"}})
        assert r.status_code == 200
        assert r.json()["ok"] is False and r.json()["status"] == 500
        assert r.json()["result"] == {"error": "database down"}

        assert c.post("/v1/tools", json=spec(gateway, name="slow", url=server.url("/slow"), timeout_s=1)
                      ).status_code == 201
        r = c.post("/v1/tools/slow/test", json={"arguments": {"order_id": "1234"}})
        assert r.status_code == 200 and r.json()["ok"] is False and r.json()["error"].startswith("timeout")
        assert r.json()["elapsed_s"] < 1.5

        assert c.post("/v1/tools/no_such_tool/test", json={"arguments": {}}).status_code == 404
        r = c.post("/v1/tools/lookup_order/test", content=b"{", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"


def test_an_internal_tool_is_accepted_when_allowed_and_refused_again_when_called(
        gateway: Gateway, open_gateway: Gateway) -> None:
    server = gateway[3]
    # 0.0.0.0 reaches this host's loopback on Linux: the tool server, at an address the policy refuses.
    internal = spec(gateway, name="internal", url=server.url("/ok").replace("127.0.0.1", "0.0.0.0"))
    with client(gateway, "e") as closed, client(open_gateway, "e") as opened:
        assert closed.post("/v1/tools", json=internal).status_code == 422  # refused (see BAD for the reasons)
        assert names(closed) == []
        assert opened.post("/v1/tools", json=internal).status_code == 201
        assert names(closed) == ["internal"]

        before = len(server.requests)
        r = closed.post("/v1/tools/internal/test", json={"arguments": {"order_id": "1234"}})
        assert r.status_code == 200, r.text
        outcome = r.json()
        assert outcome["ok"] is False and outcome["status"] is None
        assert outcome["error"].startswith("refused: 0.0.0.0 is an unspecified address")
        assert "VQ_EGRESS_ALLOW_PRIVATE=true" in outcome["error"]
        assert len(server.requests) == before  # nothing was sent

        r = opened.post("/v1/tools/internal/test", json={"arguments": {"order_id": "1234"}})
        assert r.status_code == 200 and r.json()["ok"] is True, r.text
        assert len(server.requests) == before + 1


def test_test_calls_are_capped_so_other_routes_keep_answering(gateway: Gateway) -> None:
    server = gateway[3]
    with client(gateway, "b") as c:
        assert c.post("/v1/tools", json=spec(gateway, name="slow_b", url=server.url("/slow"), timeout_s=3)
                      ).status_code == 201
        before = len([r for r in server.requests if r.path == "/slow"])

        def slow_test(_: int) -> httpx.Response:
            with client(gateway, "b") as each:
                return each.post("/v1/tools/slow_b/test", json={"arguments": {"order_id": "1234"}})

        with ThreadPoolExecutor(TEST_CALL_SLOTS) as pool:
            running = [pool.submit(slow_test, n) for n in range(TEST_CALL_SLOTS)]
            deadline = time.monotonic() + 2.5
            while len([r for r in server.requests if r.path == "/slow"]) < before + TEST_CALL_SLOTS:
                assert time.monotonic() < deadline, "the test calls did not all reach the endpoint"
                time.sleep(0.05)
            busy = c.post("/v1/tools/slow_b/test", json={"arguments": {"order_id": "1234"}})
            assert busy.status_code == 429 and busy.json()["error"]["code"] == "tool_tests_busy"
            assert busy.headers["retry-after"] == "2"
            started = time.monotonic()
            assert "slow_b" in names(c)
            assert time.monotonic() - started < 0.5
            outcomes = [f.result().json() for f in running]
        assert all(o["ok"] is False and o["error"].startswith("timeout") for o in outcomes), outcomes
        assert c.post("/v1/tools", json=spec(gateway, name="fast_b")).status_code == 201
        after = c.post("/v1/tools/fast_b/test", json={"arguments": {"order_id": "1234"}})  # the slots are free again
        assert after.status_code == 200 and after.json()["ok"] is True


# ---- the CLI ------------------------------------------------------------------------------------------


def tools_cli(gateway: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "voicequeue"), "tools", *args, "--gateway", gateway[0]],
                          env={**os.environ, "VQ_API_KEY": gateway[2]["d"]}, capture_output=True, text=True,
                          timeout=60)


def test_cli_add_list_test_remove(gateway: Gateway, tmp_path: Path) -> None:
    schema = tmp_path / "order.json"
    schema.write_text(json.dumps(ORDER_SCHEMA))
    made = tools_cli(gateway, "add", "lookup_order", "--description", "Find an order.", "--url",
                     gateway[3].url("/ok"), "--parameters", f"@{schema}", "--timeout", "3", "--filler", "One moment.")
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == f"added lookup_order -> {gateway[3].url('/ok')} (timeout 3 s)"
    with client(gateway, "d") as c:
        stored = c.get("/v1/tools/lookup_order").json()
    assert stored["parameters"] == ORDER_SCHEMA and stored["filler"] == "One moment." and stored["timeout_s"] == 3

    refused = tools_cli(gateway, "add", "end_call", "--description", "x", "--url", gateway[3].url("/ok"),
                        "--parameters", '{"type": "object"}')
    assert refused.returncode == 1 and "'end_call' is a built-in tool" in refused.stderr
    bad_json = tools_cli(gateway, "add", "x", "--description", "x", "--url", "https://a.example",
                         "--parameters", "{not json")
    assert bad_json.returncode == 2 and "--parameters is not valid JSON" in bad_json.stderr

    listed = tools_cli(gateway, "list")
    assert listed.returncode == 0 and listed.stdout.splitlines() == [
        f"lookup_order\t{gateway[3].url('/ok')}\t3 s\tFind an order."]

    tested = tools_cli(gateway, "test", "lookup_order", "--arguments", '{"order_id": "98765"}')
    assert tested.returncode == 0, tested.stderr
    assert json.loads(tested.stdout)["result"] == {"echo": {"order_id": "98765"}, "status": "shipped"}
    invalid = tools_cli(gateway, "test", "lookup_order", "--arguments", '{"order_id": "x"}')
    assert invalid.returncode == 1 and "does not match" in invalid.stderr

    assert tools_cli(gateway, "remove", "lookup_order").stdout.strip() == "removed lookup_order"
    gone = tools_cli(gateway, "remove", "lookup_order")
    assert gone.returncode == 1 and "no tool named 'lookup_order'" in gone.stderr
