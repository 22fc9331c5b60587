"""shared.tools: tool specs are checked, stored per tenant on a real Redis, offered in OpenAI's shape, their
arguments checked against their schema, and called over real HTTP (a local server as the tenant's endpoint):
signed, capped, bounded in time, never raising."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from shared import keys, retention, signing, tools
from tests.fakes.resolver import install
from tests.fakes.tool_server import ToolServer
from tests.stack import free_port

ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"order_id": {"type": "string", "pattern": "^[0-9]{4,10}$"},
                   "email": {"type": "string", "format": "email"}},
    "required": ["order_id"],
    "additionalProperties": False,
}


def spec(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "lookup_order", "description": "Find an order's status by its number.",
                            "parameters": ORDER_SCHEMA, "url": "https://shop.example/tools/order"}
    return {**base, **changes}


def tool_at(url: str, **changes: Any) -> tools.Tool:
    return tools.parse(spec(url=url, **changes))


@pytest.fixture(scope="module")
def server() -> Iterator[ToolServer]:
    with ToolServer(slow_s=3.0) as s:
        yield s


# ---- specs --------------------------------------------------------------------------------------------


def test_a_good_spec_parses_with_defaults() -> None:
    tool = tools.parse(spec(filler="One moment while I look that up."))
    assert tool.name == "lookup_order" and tool.timeout_s == 5.0
    assert tool.parameters == ORDER_SCHEMA and tool.filler == "One moment while I look that up."
    assert tools.parse(spec()).filler is None


BAD_SPECS: dict[str, tuple[dict[str, Any], str]] = {
    "name starts with a digit": (spec(name="1order"), "1-64 characters"),
    "name with a space": (spec(name="look up"), "1-64 characters"),
    "name too long": (spec(name="a" * 65), "1-64 characters"),
    "built-in name": (spec(name="end_call"), "'end_call' is a built-in tool"),
    "built-in name, other case": (spec(name="Transfer_To_Human"), "is a built-in tool"),
    "schema not an object type": (spec(parameters={"type": "array"}), '"type": "object"'),
    "schema not a schema": (spec(parameters={"type": "object", "properties": {"x": {"type": "strin"}}}),
                            "not a valid JSON Schema at properties/x/type"),
    "schema not a dict": (spec(parameters="order id"), "valid dictionary"),
    "remote $ref": (spec(parameters={"type": "object", "properties": {"x": {"$ref": "https://a.example/s"}}}),
                    "only local references"),
    "http to another host": (spec(url="http://shop.example/order"), "must use https"),
    "ftp": (spec(url="ftp://shop.example/order"), "https:// URL with a host"),
    "no host": (spec(url="https:///order"), "https:// URL with a host"),
    "space in url": (spec(url="https://exa mple.com/order"), "must not contain spaces or control characters"),
    "control character in url": (spec(url="https://exa\x00mple.com/order"), "must not contain spaces"),
    "empty host label": (spec(url="https://shop..example/order"), "'shop..example' is not a valid host name"),
    "broken ipv6 literal": (spec(url="https://[::1/order"), "is not a URL: Invalid IPv6 URL"),
    "credentials in url": (spec(url="https://me:pw@shop.example/order"), "must not carry credentials"),
    "timeout too short": (spec(timeout_s=0.1), "greater than or equal to 0.5"),
    "timeout too long": (spec(timeout_s=31), "less than or equal to 30"),
    "blank description": (spec(description="   "), "description is blank"),
    "description too long": (spec(description="x" * 1001), "at most 1000 characters"),
    "unknown field": (spec(timeout=3), "Extra inputs are not permitted"),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_bad_specs_are_refused_saying_why(case: str) -> None:
    data, message = BAD_SPECS[case]
    with pytest.raises(ValidationError) as caught:
        tools.parse(data)
    assert message in str(caught.value)


def test_plain_http_is_for_loopback_unless_allowed() -> None:
    for url in ("http://127.0.0.1:8080/t", "http://localhost/t", "http://[::1]:9/t", "http://127.0.0.2/t"):
        assert tools.parse(spec(url=url)).url == url
    with pytest.raises(ValidationError, match=r"must use https \(.* the operator sets VQ_TOOLS_ALLOW_HTTP=true\)"):
        tools.parse(spec(url="http://shop.example/t"))
    assert tools.parse(spec(url="http://shop.example/t"), allow_http=True).url == "http://shop.example/t"
    # Plain http says nothing about where: a private host needs egress_allow_private as well.
    with pytest.raises(ValidationError, match=r"10\.0\.0\.5 is a private address"):
        tools.parse(spec(url="http://10.0.0.5/t"), allow_http=True)
    assert tools.parse(spec(url="http://10.0.0.5/t"), allow_http=True, allow_private=True).url == "http://10.0.0.5/t"


@pytest.mark.parametrize("url", ["https://169.254.169.254/latest/meta-data/", "https://10.0.0.5/t",
                                 "https://[::ffff:169.254.169.254]/t", "https://2852039166/t"])
def test_a_tool_at_an_internal_address_is_refused_unless_the_operator_allows_it(url: str) -> None:
    with pytest.raises(ValidationError) as caught:
        tools.parse(spec(url=url))
    (error,) = caught.value.errors()
    assert error["loc"] == ("url",)
    assert " address: tenants' webhooks and tools may not call internal addresses" in error["msg"]
    assert "VQ_EGRESS_ALLOW_PRIVATE=true" in error["msg"]
    assert tools.parse(spec(url=url), allow_private=True).url == url


# ---- storage ------------------------------------------------------------------------------------------


def test_put_get_list_replace_delete(conn: redis.Redis) -> None:
    first = tools.put(conn, "shop-a", tools.parse(spec(name="track_parcel")))
    tools.put(conn, "shop-a", tools.parse(spec()))
    assert [t.name for t in tools.list_tools(conn, "shop-a")] == ["lookup_order", "track_parcel"]
    got = tools.get(conn, "shop-a", "track_parcel")
    assert got is not None and got.url == "https://shop.example/tools/order"

    time.sleep(0.01)
    replaced = tools.put(conn, "shop-a", tools.parse(spec(name="track_parcel", timeout_s=2)))
    assert replaced.created_at == first.created_at and replaced.updated_at is not None
    assert replaced.updated_at > first.created_at
    again = tools.get(conn, "shop-a", "track_parcel")
    assert again is not None and again.timeout_s == 2
    assert len(tools.list_tools(conn, "shop-a")) == 2

    assert tools.list_tools(conn, "shop-b") == [] and tools.get(conn, "shop-b", "track_parcel") is None
    assert not tools.delete(conn, "shop-b", "track_parcel")  # another tenant's name is not theirs to delete
    assert tools.delete(conn, "shop-a", "track_parcel")
    assert not tools.delete(conn, "shop-a", "track_parcel")
    assert tools.get(conn, "shop-a", "track_parcel") is None


def test_tools_are_kept_until_deleted(conn: redis.Redis) -> None:
    tools.put(conn, "shop-a", tools.parse(spec()))
    assert conn.ttl(keys.tools("shop-a")) == -1
    assert keys.tools("shop-a") not in retention.untimed(conn)  # the sweep leaves them alone


def test_a_tenant_has_at_most_max_tools(conn: redis.Redis) -> None:
    for n in range(3):
        tools.put(conn, "shop-a", tools.parse(spec(name=f"tool_{n}")), max_tools=3)
    with pytest.raises(tools.TooManyTools, match="at most 3 tools"):
        tools.put(conn, "shop-a", tools.parse(spec(name="tool_3")), max_tools=3)
    tools.put(conn, "shop-a", tools.parse(spec(name="tool_1", timeout_s=9)), max_tools=3)  # replacing is fine
    assert [t.timeout_s for t in tools.list_tools(conn, "shop-a")] == [5.0, 9.0, 5.0]
    tools.put(conn, "shop-b", tools.parse(spec(name="tool_3")), max_tools=3)  # the cap is per tenant


def test_a_tool_stored_under_allow_http_still_loads(conn: redis.Redis) -> None:
    tools.put(conn, "shop-a", tools.parse(spec(url="http://10.0.0.5/t"), allow_http=True, allow_private=True))
    loaded = tools.get(conn, "shop-a", "lookup_order")
    assert loaded is not None and loaded.url == "http://10.0.0.5/t"


# ---- offering and checking ----------------------------------------------------------------------------


def test_openai_tools_shape() -> None:
    offered = tools.openai_tools([tools.parse(spec())])
    assert offered == [{"type": "function", "function": {
        "name": "lookup_order", "description": "Find an order's status by its number.", "parameters": ORDER_SCHEMA}}]


def test_check_arguments() -> None:
    tool = tools.parse(spec())
    assert tools.check_arguments(tool, {"order_id": "123456"}) == []
    assert tools.check_arguments(tool, {"order_id": "12a"}) == ["$.order_id: '12a' does not match '^[0-9]{4,10}$'"]
    assert tools.check_arguments(tool, {}) == ["$: 'order_id' is a required property"]
    assert tools.check_arguments(tool, "123456") == ["$: '123456' is not of type 'object'"]
    wrong = tools.check_arguments(tool, {"order_id": 1234, "email": "not-an-email", "extra": 1})
    assert wrong == [
        "$: Additional properties are not allowed ('extra' was unexpected)",
        "$.email: 'not-an-email' is not a 'email'",
        "$.order_id: 1234 is not of type 'string'",
    ]


# ---- calling ------------------------------------------------------------------------------------------


def call(tool: tools.Tool, arguments: dict[str, Any] | None = None, **kwargs: Any) -> tools.ToolOutcome:
    kwargs.setdefault("secret", None)
    return tools.call(tool, arguments if arguments is not None else {"order_id": "123456"}, call_id="call-1",
                      tenant="shop-a", **kwargs)


def test_a_signed_call_returns_the_json_answer(server: ToolServer) -> None:
    secret = signing.new_secret()
    outcome = call(tool_at(server.url("/ok")), secret=secret)
    assert outcome.ok and outcome.status == 200 and outcome.error is None
    assert outcome.result == {"echo": {"order_id": "123456"}, "status": "shipped"}
    assert 0 < outcome.elapsed_s < 2
    got = server.requests[-1]
    assert json.loads(got.body) == {"tool": "lookup_order", "arguments": {"order_id": "123456"},
                                    "call_id": "call-1", "tenant": "shop-a"}
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-voicequeue-tool"] == "lookup_order"
    assert signing.verify(secret, got.body, got.headers["x-voicequeue-signature"])
    assert not signing.verify("whsec_other", got.body, got.headers["x-voicequeue-signature"])


def test_without_a_secret_the_call_is_unsigned(server: ToolServer) -> None:
    assert call(tool_at(server.url("/ok"))).ok
    assert "x-voicequeue-signature" not in server.requests[-1].headers


def test_an_error_status_is_not_ok_and_keeps_the_body(server: ToolServer) -> None:
    outcome = call(tool_at(server.url("/fail")))
    assert not outcome.ok and outcome.status == 500
    assert outcome.error == "the endpoint answered HTTP 500"
    assert outcome.result == {"error": "database down"}


def test_a_slow_endpoint_times_out_within_the_budget(server: ToolServer) -> None:
    outcome = call(tool_at(server.url("/slow"), timeout_s=1))
    assert not outcome.ok and outcome.status is None
    assert outcome.error is not None and outcome.error.startswith("timeout")
    assert 0.9 <= outcome.elapsed_s < 1.5, outcome.elapsed_s
    # The caller's budget wins over the tool's own.
    started = time.monotonic()
    short = call(tool_at(server.url("/slow"), timeout_s=10), timeout_s=0.6)
    assert not short.ok and short.error is not None and short.error.startswith("timeout")
    assert time.monotonic() - started < 1.0


def test_a_trickling_endpoint_is_cut_off_at_the_budget(server: ToolServer) -> None:
    """Each read is quicker than the timeout, the whole answer is not: the budget is for the whole call."""
    outcome = call(tool_at(server.url("/trickle"), timeout_s=1))
    assert not outcome.ok and outcome.error is not None and outcome.error.startswith("timeout")
    assert outcome.elapsed_s < 1.3, outcome.elapsed_s


def test_an_oversized_answer_is_cut_off(server: ToolServer) -> None:
    outcome = call(tool_at(server.url("/big")))
    assert not outcome.ok and outcome.status == 200
    assert outcome.error == "the response is larger than 64 KB"
    assert isinstance(outcome.result, str) and outcome.result.startswith('{"pad": "xxx')
    assert len(outcome.result) <= tools.MAX_TEXT_CHARS + 1


def test_a_text_answer_is_not_ok_but_shown(server: ToolServer) -> None:
    outcome = call(tool_at(server.url("/text")))
    assert not outcome.ok and outcome.error == "the response is not JSON"
    assert outcome.result == "order 1234 shipped"


def test_an_empty_answer_is_ok(server: ToolServer) -> None:
    outcome = call(tool_at(server.url("/empty")))
    assert outcome.ok and outcome.status == 204 and outcome.result is None


def test_a_brief_503_is_retried_once(server: ToolServer) -> None:
    before = len([r for r in server.requests if r.path == "/busy-once"])
    outcome = call(tool_at(server.url("/busy-once")))
    assert outcome.ok and outcome.result == {"tries": before + 2}
    assert len([r for r in server.requests if r.path == "/busy-once"]) == before + 2


def test_a_long_retry_after_is_not_waited_for(server: ToolServer) -> None:
    before = len([r for r in server.requests if r.path == "/busy-long"])
    outcome = call(tool_at(server.url("/busy-long")))
    assert not outcome.ok and outcome.status == 503 and outcome.result == {"error": "busy"}
    assert outcome.elapsed_s < 1
    assert len([r for r in server.requests if r.path == "/busy-long"]) == before + 1


def test_nothing_listening_is_a_connection_error() -> None:
    outcome = call(tool_at(f"http://127.0.0.1:{free_port()}/t"))
    assert not outcome.ok and outcome.status is None
    assert outcome.error is not None and outcome.error.startswith("connection failed: ConnectError")


def test_an_internal_address_is_refused_again_when_the_tool_is_called(server: ToolServer) -> None:
    # 0.0.0.0 reaches this host's loopback on Linux: the same server, at an address the policy refuses.
    url = server.url("/ok").replace("127.0.0.1", "0.0.0.0")
    tool = tools.parse(spec(url=url), allow_http=True, allow_private=True)  # registered while allowed
    before = len(server.requests)
    outcome = call(tool)
    assert not outcome.ok and outcome.status is None and outcome.result is None
    assert outcome.error is not None and outcome.error.startswith("refused: 0.0.0.0 is an unspecified address")
    assert "VQ_EGRESS_ALLOW_PRIVATE=true" in outcome.error
    assert len(server.requests) == before  # nothing was sent
    allowed = call(tool, allow_private=True)
    assert allowed.ok and allowed.result["status"] == "shipped", allowed
    assert len(server.requests) == before + 1


def test_arguments_that_are_not_json_do_not_raise(server: ToolServer) -> None:
    for arguments in ({"order_id": object()}, {"amount": float("nan")}):
        outcome = call(tool_at(server.url("/ok")), arguments)
        assert not outcome.ok and outcome.error is not None and "not JSON" in outcome.error, outcome
    assert not [r for r in server.requests if b"NaN" in r.body]


def test_a_call_looks_the_name_up_once_and_connects_where_it_pointed(monkeypatch: pytest.MonkeyPatch) -> None:
    dns = install(monkeypatch, {"tools.test": ["127.0.0.1"]})  # httpx itself cannot resolve this name
    with ToolServer() as server:  # its own: /busy-once answers 503 to its first request only
        url = server.url("/busy-once").replace("127.0.0.1", "tools.test")
        tool = tools.parse(spec(url=url), allow_http=True)
        dns.lookups.clear()
        outcome = call(tool)
        assert outcome.ok and outcome.result == {"tries": 2}, outcome  # the retry went to the same address
        assert dns.lookups == ["tools.test"]  # once for the call, its retry included; none by httpx
        port = url.split(":")[2].split("/")[0]
        assert [r.headers["host"] for r in server.requests] == [f"tools.test:{port}"] * 2

        dns.table["tools.test"] = ["10.0.0.5"]  # it rebinds: refused, nothing sent
        refused = call(tool)
        assert not refused.ok and refused.error is not None
        assert refused.error.startswith("refused: 'tools.test' resolves to 10.0.0.5, which is a private address")
        assert len(server.requests) == 2 and dns.lookups == ["tools.test"] * 2


def test_a_url_httpx_cannot_use_gives_an_outcome_not_an_exception() -> None:
    # Stored tools are not re-checked on load; a URL that slipped through must still not raise. Its host
    # is no valid name, so it resolves to nothing, and nothing is connected to.
    tool = tools.parse(spec()).model_copy(update={"url": "https://shop..example/t"})
    outcome = call(tool)
    assert not outcome.ok and outcome.error is not None
    assert outcome.error == "connection failed: ConnectError: 'shop..example' does not resolve", outcome.error
    assert outcome.elapsed_s < 1


def test_a_broken_local_ref_is_reported_not_raised() -> None:
    tool = tools.parse(spec(parameters={"type": "object", "properties": {"x": {"$ref": "#/$defs/nope"}}}))
    assert tools.check_arguments(tool, {"y": 1}) == []  # the reference is not needed here
    found = tools.check_arguments(tool, {"x": 1})
    assert len(found) == 1 and found[0].startswith("$: the tool's parameters schema has a broken reference")
