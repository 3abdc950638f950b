"""Span data types shared by the recorder, the store and the views (stdlib only).

`SpanRecord` is the one mutable type: the recorder fills it in on the caller's thread while a
run is open, then hands it to the writer and never touches it again. It stays a plain slotted
class because building a frozen dataclass of thirty fields costs several microseconds on the
hot path. Everything the read side returns is frozen.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class SpanKind(str, enum.Enum):
    """What a span represents; mirrors the frameworks' own run types."""

    CHAIN = "chain"
    LLM = "llm"
    RETRIEVER = "retriever"
    TOOL = "tool"
    EMBEDDING = "embedding"
    AGENT = "agent"
    RERANKER = "reranker"
    PROMPT = "prompt"
    PARSER = "parser"
    EVALUATOR = "evaluator"
    OTHER = "other"


class Status(str, enum.Enum):
    """How a span ended."""

    OK = "ok"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage of one model call. `None` means unknown, never zero."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    source: str | None = None

    @property
    def known(self) -> bool:
        """Whether any token count is known."""
        return self.prompt_tokens is not None or self.completion_tokens is not None


@dataclass(slots=True)
class SpanEvent:
    """Something that happened inside a span: a retry, the first token, a custom event."""

    name: str
    time_ns: int
    attributes: Any = None


@dataclass(slots=True)
class SpanRecord:
    """An open or just-finished span, as the recorder builds it.

    Inputs, outputs and metadata hold the framework's own objects; the writer thread turns
    them into JSON so the caller's thread never encodes anything.
    """

    span_id: str
    trace_id: str
    parent_id: str | None
    name: str
    kind: str
    framework: str
    start_ns: int
    end_ns: int | None = None
    status: str = "ok"
    error: str | None = None
    model: str | None = None
    provider: str | None = None
    usage: Usage | None = None
    usage_note: str | None = None
    ttft_ns: int | None = None
    finish_reason: str | None = None
    inputs: Any = None
    outputs: Any = None
    tags: list[str] | None = None
    metadata: dict[str, Any] | None = None
    user_id: str | None = None
    session_id: str | None = None
    counts_usage: bool = True
    events: list[SpanEvent] | None = None
    extra: dict[str, Any] | None = field(default=None)

    def add_event(self, name: str, time_ns: int, attributes: Any = None) -> None:
        """Attach an event; events are written with the span."""
        if self.events is None:
            self.events = []
        self.events.append(SpanEvent(name, time_ns, attributes))


@dataclass(frozen=True, slots=True)
class Span:
    """One stored span, as the read API returns it (a row of the `spans` table)."""

    span_id: str
    trace_id: str
    parent_id: str | None
    name: str
    kind: str
    framework: str
    start_time: str
    end_time: str
    duration_ms: float
    status: str
    error: str | None
    model: str | None
    provider: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    cached_tokens: int | None
    reasoning_tokens: int | None
    cost_usd: float | None
    ttft_ms: float | None
    finish_reason: str | None
    inputs: Any
    outputs: Any
    tags: list[str]
    metadata: dict[str, Any]
    user_id: str | None
    session_id: str | None
    usage_note: str | None = None
    cost_note: str | None = None
    counts_usage: int = 1
