"""session.update's instructions and the call's history length, on a `CallSession` (real Redis, no socket)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from services.gateway.calls.protocol import ProtocolError
from services.gateway.calls.session import CallSession, Item
from services.gateway.config import GatewaySettings


@pytest.fixture
def session(redis_url: str) -> Iterator[CallSession]:
    conn, aconn = redis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)

    async def send(_event: dict[str, object]) -> None:
        return None

    yield CallSession(conn=conn, aconn=aconn, settings=GatewaySettings(call_max_instructions_chars=100),
                      tenant="t", send=send, transport="test")
    conn.close()


def test_instructions_are_kept_and_described(session: CallSession) -> None:
    session.update({"type": "realtime", "instructions": "  Answer in one sentence.  "})
    assert session.config.instructions == "Answer in one sentence."
    assert session.describe()["instructions"] == "Answer in one sentence."
    session.update({"voice": "alloy"})  # an update without instructions leaves them
    assert session.config.instructions == "Answer in one sentence."
    session.update({"instructions": ""})
    assert session.config.instructions is None


@pytest.mark.parametrize(("value", "words"), [(42, "must be a string"), ("x" * 101, "101 characters")])
def test_bad_instructions_are_refused_and_change_nothing(session: CallSession, value: object, words: str) -> None:
    session.update({"instructions": "Be brief."})
    with pytest.raises(ProtocolError) as refused:
        session.update({"instructions": value, "input_audio_format": "g711_ulaw"}, "ev7")
    assert refused.value.code == "invalid_value" and words in refused.value.message
    assert refused.value.event_id == "ev7" and refused.value.param == "session.instructions"
    assert session.config.instructions == "Be brief." and session.config.input_format.codec == "pcm16"


def test_twenty_exchanges_of_history_by_default(session: CallSession) -> None:
    session.settings = GatewaySettings()
    session.items = [Item(f"i{i}", "user" if i % 2 == 0 else "assistant", f"m{i}", float(i)) for i in range(61)]
    text, history = session.history()
    assert text == "m60" and len(history) == 40 and history[0]["content"] == "m20"
