"""What an LLM engine offers the stage: a streamed chat reply and its accounting."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypedDict


class Message(TypedDict):
    role: str
    content: str


@dataclass
class ChatResult:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    usage_estimated: bool  # True when the server sent no usage and the counts are our estimate
    ttft_s: float | None  # from the first request (retries included) to the first text delta
    finish_reason: str | None  # "stop", "length", or "cancelled" when the caller stopped reading
    retries: int
    # Calls the server parsed out of the reply ({"name", "arguments"}: arguments as the model wrote them).
    tool_calls: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ChatStream(Protocol):
    """Iterate for text deltas; `result` is complete once iteration ends or `close()` is called."""

    def __iter__(self) -> Iterator[str]: ...

    def close(self) -> None: ...

    @property
    def result(self) -> ChatResult: ...


class ChatEngine(Protocol):
    model: str

    def stream(self, messages: Sequence[Message], tools: list[dict[str, Any]] | None = None) -> ChatStream:
        """Start a reply; `tools` (the OpenAI chat-completions shape) lets the model call them. Raises
        `shared.retry.UpstreamError` if the upstream cannot be reached for good."""
        ...

    def structured(self, messages: Sequence[Message], schema: dict[str, Any], max_tokens: int) -> Any:
        """A short unstreamed answer constrained by the JSON `schema` (a decision, a tool's arguments), parsed;
        None if the server's answer is not JSON."""
        ...
