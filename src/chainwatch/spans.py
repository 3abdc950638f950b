"""Span data types shared by the recorder, the store and the views (stdlib only).

`SpanRecord` is the one mutable type: the recorder fills it in on the caller's thread while a
run is open, then hands it to the writer and never touches it again. It stays a plain slotted
class because building a frozen dataclass of thirty fields costs several microseconds on the
hot path. Everything the read side returns is frozen.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar


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


_DEFAULTS = {"usage_note": None, "cost_note": None, "counts_usage": 1}
# The JSON columns, and what an empty one reads as.
_JSON_EMPTY: dict[str, type] = {"inputs": type(None), "outputs": type(None), "tags": list,
                                "metadata": dict}


class _Json:
    """JSON text from the database, decoded on first read."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _decode(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


class Span:
    """One stored span, as the read API returns it (a row of the `spans` table).

    Read-only. Its fields (`Span.fields`) are the table's columns, in order; `inputs`,
    `outputs`, `tags` and `metadata` hold decoded JSON, decoded on first read: a hook that looks
    only at model calls does not pay for decoding every chain's inputs.
    """

    __slots__ = ("_values",)
    fields: ClassVar[tuple[str, ...]]
    _values: list[Any]
    # The columns, in the table's order: `SPAN_FIELDS` is read from these lines.
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
    usage_note: str | None
    cost_note: str | None
    counts_usage: int

    def __init__(self, *values: Any, **named: Any) -> None:
        if len(values) > len(SPAN_FIELDS):
            raise TypeError(f"Span takes at most {len(SPAN_FIELDS)} values")
        given = dict(zip(SPAN_FIELDS, values, strict=False))
        for key, value in named.items():
            if key not in _INDEX:
                raise TypeError(f"Span has no field {key!r}")
            if key in given:
                raise TypeError(f"Span got two values for {key!r}")
            given[key] = value
        missing = [f for f in SPAN_FIELDS if f not in given and f not in _DEFAULTS]
        if missing:
            raise TypeError(f"Span is missing {', '.join(missing)}")
        object.__setattr__(self, "_values", [given.get(f, _DEFAULTS.get(f)) for f in SPAN_FIELDS])

    @classmethod
    def from_row(cls, values: list[Any]) -> Span:
        """A span from a `spans` row in SPAN_FIELDS order, JSON columns still as text."""
        for position, empty in _JSON_POSITIONS:
            text = values[position]
            if text is None:
                values[position] = empty() if empty is not type(None) else None
            elif text == "[]" or text == "{}":
                values[position] = [] if text == "[]" else {}
            else:
                values[position] = _Json(text)
        span = cls.__new__(cls)
        object.__setattr__(span, "_values", values)
        return span

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Span is read-only: cannot set {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict, JSON columns decoded."""
        return {name: getattr(self, name) for name in SPAN_FIELDS}

    def __eq__(self, other: object) -> bool:
        if type(other) is not Span:
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        body = ", ".join(f"{name}={getattr(self, name)!r}" for name in SPAN_FIELDS)
        return f"Span({body})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Span, tuple(getattr(self, name) for name in SPAN_FIELDS))


SPAN_FIELDS: tuple[str, ...] = tuple(
    name for name in Span.__annotations__ if not name.startswith("_") and name != "fields"
)
Span.fields = SPAN_FIELDS
_INDEX = {name: i for i, name in enumerate(SPAN_FIELDS)}
_JSON_POSITIONS = tuple((_INDEX[name], empty) for name, empty in _JSON_EMPTY.items())


def _plain_field(position: int) -> property:
    def read(self: Span) -> Any:
        return self._values[position]

    return property(read)


def _json_field(position: int) -> property:
    def read(self: Span) -> Any:
        values = self._values
        value = values[position]
        if type(value) is _Json:
            value = values[position] = _decode(value.text)
        return value

    return property(read)


for _name, _position in _INDEX.items():
    if _name in _JSON_EMPTY:
        setattr(Span, _name, _json_field(_position))
    else:
        setattr(Span, _name, _plain_field(_position))
