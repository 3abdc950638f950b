"""Scripted replies of the fake provider: the Reply type, token counting, the demo's answers.

Kept apart from the HTTP server in `fake_provider`, which only speaks the protocol.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_EMBEDDING_DIMENSIONS = 8
TOKENS_PER_MESSAGE = 4

_ERROR_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"),
    404: ("not_found_error", "not_found"),
    408: ("timeout_error", "timeout"),
    409: ("conflict_error", "conflict"),
    422: ("invalid_request_error", "unprocessable_entity"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}
_PIECE_RE = re.compile(r"\S*\s*")


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted answer of the fake provider.

    Attributes:
        content: Assistant text (``choices[0].message.content`` or ``choices[0].text``).
        tool_calls: Tool calls to return, each ``{"name": str, "arguments": dict | str}``
            (an optional ``"id"`` overrides the generated ``call_N``). Setting it makes the
            default finish reason ``"tool_calls"``. Ignored by legacy completions.
        prompt_tokens: Reported prompt tokens; ``None`` computes a deterministic count from the
            request (words plus 4 per chat message).
        completion_tokens: Reported completion tokens; ``None`` counts the words of the content
            and of the tool calls.
        cached_tokens: Reported as ``usage.prompt_tokens_details.cached_tokens``.
        reasoning_tokens: Reported as ``usage.completion_tokens_details.reasoning_tokens``.
        finish_reason: Finish reason; defaults to ``"stop"`` (or ``"tool_calls"``).
        delay_s: Seconds to sleep before answering (before the first chunk when streaming).
        chunk_delay_s: Seconds to sleep between streamed chunks.
        status: HTTP status; anything but 200 returns an OpenAI-style error body.
        error_message: Message of the error body when ``status`` is not 200.
        retry_after: Value of the ``Retry-After`` header sent with an error response.
        model: Model name echoed in the response; defaults to the request's model.

    """

    content: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    finish_reason: str | None = None
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    status: int = 200
    error_message: str = "fake provider error"
    retry_after: float | None = None
    model: str | None = None


Responder = Callable[[dict[str, Any]], Reply]


def _text_of(content: Any) -> str:
    """Return the plain text of a message ``content`` (string or list of content parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return " ".join(parts)
    return str(content)


def _count_words(text: str) -> int:
    return len(text.split())


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, list):
        return " ".join(p if isinstance(p, str) else json.dumps(p) for p in prompt)
    return _text_of(prompt)


def count_prompt_tokens(body: dict[str, Any]) -> int:
    """Deterministically count the prompt tokens of a request body.

    Chat requests count the words of every message plus 4 per message; legacy completion
    requests count the words of the prompt.

    Args:
        body: The parsed JSON request body.

    Returns:
        The fake prompt token count.

    """
    messages = body.get("messages")
    if isinstance(messages, list):
        total = 0
        for message in messages:
            if not isinstance(message, dict):
                continue
            total += TOKENS_PER_MESSAGE + _count_words(_text_of(message.get("content")))
            for call in message.get("tool_calls") or []:
                function = call.get("function", {}) if isinstance(call, dict) else {}
                total += _count_words(f"{function.get('name', '')} {function.get('arguments', '')}")
        return total
    return _count_words(_prompt_text(body.get("prompt")))


def _arguments_json(arguments: Any) -> str:
    if isinstance(arguments, str):
        return arguments
    return json.dumps(arguments if arguments is not None else {})


def count_completion_tokens(reply: Reply) -> int:
    """Deterministically count the completion tokens of a reply.

    Args:
        reply: The reply about to be sent.

    Returns:
        The number of words of the content and of the tool calls (name and arguments).

    """
    total = _count_words(reply.content)
    for call in reply.tool_calls or []:
        total += _count_words(f"{call.get('name', '')} {_arguments_json(call.get('arguments'))}")
    return total


def _last_user_text(body: dict[str, Any]) -> tuple[str, str]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return "user", _prompt_text(body.get("prompt"))
    last_role = ""
    for message in reversed(messages):
        if isinstance(message, dict):
            last_role = str(message.get("role", ""))
            break
    if last_role == "tool":
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "tool":
                return "tool", _text_of(message.get("content"))
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return "user", _text_of(message.get("content"))
    return "user", ""


_CANNED_ANSWERS: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("capital", "france", "paris"),
        (
            "The capital of France is Paris, which has been the country's political and cultural "
            "centre for centuries."
        ),
    ),
    (
        ("weather", "rain", "forecast", "temperature"),
        (
            "I can't see live weather, but a typical forecast would be mild with a chance of "
            "light rain later in the day."
        ),
    ),
    (
        ("langchain", "llamaindex", "llama_index", "llama index", "agent", "chain"),
        (
            "LangChain and LlamaIndex both let you compose LLM calls, retrievers and tools into "
            "pipelines; tracing each step makes latency and cost easy to understand."
        ),
    ),
    (
        ("cost", "price", "token", "tokens", "budget"),
        (
            "Cost is driven by tokens: prompt tokens are usually cheaper than completion tokens, "
            "and cached prompt tokens cost less still."
        ),
    ),
    (
        ("sqlite", "database", "sql"),
        (
            "SQLite stores the whole database in a single local file, which makes it ideal for "
            "keeping traces you can query with plain SQL."
        ),
    ),
    (
        ("summarize", "summarise", "summary", "tl;dr"),
        (
            "Summary: the text describes a small system, explains how its parts fit together and "
            "ends with a few practical recommendations."
        ),
    ),
    (
        ("joke", "funny"),
        "Why did the developer go broke? Because they used up all their cache.",
    ),
    (
        ("hello", "hi", "hey", "greetings"),
        "Hello! I'm a fake model running on your machine. How can I help you today?",
    ),
)


def demo_responder(body: dict[str, Any]) -> Reply:
    """Answer a request plausibly and deterministically from its last user message.

    A few topics (capitals, weather, LangChain/LlamaIndex, costs, SQLite, summaries, jokes and
    greetings) get canned answers; if the conversation ends with a tool result, the answer
    quotes it; anything else gets a generic echo.

    Args:
        body: The parsed JSON request body (chat or legacy completion).

    Returns:
        The reply to send.

    """
    role, text = _last_user_text(body)
    if role == "tool":
        snippet = " ".join(text.split())[:200]
        return Reply(content=f"Based on the tool result ({snippet}), here is the answer.")
    words = set(re.findall(r"[a-z_;]+", text.lower()))
    lowered = text.lower()
    for keywords, answer in _CANNED_ANSWERS:
        if any((k in lowered) if " " in k else (k in words) for k in keywords):
            return Reply(content=answer)
    snippet = " ".join(text.split())[:120]
    if not snippet:
        return Reply(content="I'm a fake model and I didn't receive a question.")
    return Reply(
        content=f'You asked: "{snippet}". This deterministic answer comes from the local fake '
        "provider, so no real model was called."
    )


def _split_pieces(content: str) -> list[str]:
    return [piece for piece in _PIECE_RE.findall(content) if piece]


def _embedding(text: str, dimensions: int) -> list[float]:
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        for offset in range(0, len(digest), 4):
            (number,) = struct.unpack_from("<I", digest, offset)
            values.append(number / 0xFFFFFFFF * 2.0 - 1.0)
        counter += 1
    values = values[:dimensions]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in values]


def _usage(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    prompt = reply.prompt_tokens if reply.prompt_tokens is not None else count_prompt_tokens(body)
    completion = (
        reply.completion_tokens
        if reply.completion_tokens is not None
        else count_completion_tokens(reply)
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": reply.reasoning_tokens},
    }
