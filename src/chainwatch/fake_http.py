"""The fake provider's HTTP side: the OpenAI REST endpoints, plain and streamed.

`FakeOpenAI` (in `fake_provider`) owns the server and decides each reply; this module only
speaks the protocol.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from .fake_replies import (
    _ERROR_TYPES,
    DEFAULT_EMBEDDING_DIMENSIONS,
    DEFAULT_MODEL,
    Reply,
    _arguments_json,
    _count_words,
    _embedding,
    _split_pieces,
    _usage,
)

if TYPE_CHECKING:
    from .fake_provider import FakeOpenAI

def _envelope(
    completion_id: str, kind: str, created: int, model: str, choices: list[Any]
) -> dict[str, Any]:
    """What every completion and stream chunk carries around its choices."""
    return {
        "id": completion_id,
        "object": kind,
        "created": created,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": choices,
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: FakeOpenAI

    def handle_error(self, request: Any, client_address: Any) -> None:
        return None


class _ClientGone(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeOpenAI/1.0"
    sys_version = ""
    timeout = 60
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        self._drain_body()
        self._send_error(404, f"Unknown endpoint: GET {self.path}")

    def do_DELETE(self) -> None:
        self._drain_body()
        self._send_error(404, f"Unknown endpoint: DELETE {self.path}")

    def do_POST(self) -> None:
        raw = self._drain_body()
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            body = json.loads(raw.decode("utf-8")) if raw else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            self._send_error(400, "Request body is not valid JSON.")
            return
        if not isinstance(body, dict):
            self._send_error(400, "Request body must be a JSON object.")
            return
        body["path"] = path
        owner = self.server.owner
        owner._record_request(body)
        try:
            if path.endswith("/chat/completions"):
                self._chat(body)
            elif path.endswith("/completions"):
                self._legacy(body)
            elif path.endswith("/embeddings"):
                self._embeddings(body)
            else:
                self._send_error(404, f"Unknown endpoint: POST {path}")
        except (_ClientGone, ConnectionError, TimeoutError):
            self.close_connection = True

    def _drain_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
        data = json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError as exc:
            raise _ClientGone from exc

    def _send_error(self, status: int, message: str, retry_after: float | None = None) -> None:
        error_type, code = _ERROR_TYPES.get(
            status, ("server_error", "server_error") if status >= 500 else ("api_error", None)
        )
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["Retry-After"] = f"{retry_after:g}"
        payload = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
        try:
            self._send_json(status, payload, headers)
        except _ClientGone:
            self.close_connection = True

    def _start_stream(self) -> None:
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
        except OSError as exc:
            raise _ClientGone from exc

    def _write_chunk(self, data: bytes) -> None:
        try:
            self.wfile.write(f"{len(data):x}\r\n".encode("ascii") + data + b"\r\n")
            self.wfile.flush()
        except OSError as exc:
            raise _ClientGone from exc

    def _stream_events(self, events: Iterator[dict[str, Any]], delay: float) -> None:
        self._start_stream()
        for index, event in enumerate(events):
            if index and delay > 0:
                time.sleep(delay)
            self._write_chunk(b"data: " + json.dumps(event).encode("utf-8") + b"\n\n")
        self._write_chunk(b"data: [DONE]\n\n")
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError as exc:
            raise _ClientGone from exc

    def _reply_for(self, body: dict[str, Any]) -> Reply | None:
        try:
            reply = self.server.owner._next_reply(body)
        except Exception as exc:
            self._send_error(500, f"responder failed: {exc!r}")
            return None
        if reply.delay_s > 0:
            time.sleep(reply.delay_s)
        if reply.status != 200:
            message = reply.error_message
            self._send_error(reply.status, message, reply.retry_after)
            return None
        return reply

    def _chat(self, body: dict[str, Any]) -> None:
        reply = self._reply_for(body)
        if reply is None:
            return
        owner = self.server.owner
        model = reply.model or str(body.get("model") or DEFAULT_MODEL)
        usage = _usage(reply, body)
        finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        tool_calls: list[dict[str, Any]] = [
            {
                "id": str(call.get("id") or owner._next_call_id()),
                "type": "function",
                "function": {
                    "name": str(call.get("name", "")),
                    "arguments": _arguments_json(call.get("arguments")),
                },
            }
            for call in reply.tool_calls or []
        ]
        completion_id = owner._next_id("chatcmpl-")
        created = int(time.time())
        if not body.get("stream"):
            message: dict[str, Any] = {
                "role": "assistant",
                "content": reply.content if (reply.content or not tool_calls) else None,
                "refusal": None,
            }
            if tool_calls:
                message["tool_calls"] = tool_calls
            choices = [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ]
            payload = _envelope(completion_id, "chat.completion", created, model, choices)
            payload["usage"] = usage
            owner._record_response(payload)
            self._send_json(200, payload, {})
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            event = _envelope(completion_id, "chat.completion.chunk", created, model, [choice])
            if include_usage:
                event["usage"] = None
            return event

        def events() -> Iterator[dict[str, Any]]:
            yield chunk({"role": "assistant", "content": "", "refusal": None})
            for piece in _split_pieces(reply.content):
                yield chunk({"content": piece})
            for index, call in enumerate(tool_calls):
                function = call["function"]
                yield chunk(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": call["id"],
                                "type": "function",
                                "function": {"name": function["name"], "arguments": ""},
                            }
                        ]
                    }
                )
                arguments = function["arguments"]
                step = max(1, (len(arguments) + 1) // 2)
                for start in range(0, len(arguments), step):
                    yield chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": index,
                                    "function": {"arguments": arguments[start : start + step]},
                                }
                            ]
                        }
                    )
            yield chunk({}, finish)
            if include_usage:
                last = _envelope(completion_id, "chat.completion.chunk", created, model, [])
                yield {**last, "usage": usage}

        owner._record_response({"stream": True, "usage": usage, "content": reply.content})
        self._stream_events(events(), reply.chunk_delay_s)

    def _legacy(self, body: dict[str, Any]) -> None:
        reply = self._reply_for(body)
        if reply is None:
            return
        owner = self.server.owner
        model = reply.model or str(body.get("model") or DEFAULT_MODEL)
        usage = _usage(reply, body)
        finish = reply.finish_reason or "stop"
        completion_id = owner._next_id("cmpl-")
        created = int(time.time())
        if not body.get("stream"):
            choices = [
                {"index": 0, "text": reply.content, "logprobs": None, "finish_reason": finish}
            ]
            payload = _envelope(completion_id, "text_completion", created, model, choices)
            payload["usage"] = usage
            owner._record_response(payload)
            self._send_json(200, payload, {})
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(text: str, finish_reason: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            event = _envelope(completion_id, "text_completion", created, model, [choice])
            if include_usage:
                event["usage"] = None
            return event

        def events() -> Iterator[dict[str, Any]]:
            for piece in _split_pieces(reply.content):
                yield chunk(piece)
            yield chunk("", finish)
            if include_usage:
                last = _envelope(completion_id, "text_completion", created, model, [])
                yield {**last, "usage": usage}

        owner._record_response({"stream": True, "usage": usage, "content": reply.content})
        self._stream_events(events(), reply.chunk_delay_s)

    def _embeddings(self, body: dict[str, Any]) -> None:
        raw_input = body.get("input")
        if isinstance(raw_input, str) or (
            isinstance(raw_input, list) and raw_input and isinstance(raw_input[0], int)
        ):
            inputs: list[Any] = [raw_input]
        elif isinstance(raw_input, list):
            inputs = raw_input
        else:
            self._send_error(400, "'input' must be a string or a list.")
            return
        dimensions = body.get("dimensions") or DEFAULT_EMBEDDING_DIMENSIONS
        if not isinstance(dimensions, int) or dimensions < 1:
            self._send_error(400, "'dimensions' must be a positive integer.")
            return
        use_base64 = body.get("encoding_format") == "base64"
        data: list[dict[str, Any]] = []
        prompt_tokens = 0
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                text = item
                prompt_tokens += _count_words(item)
            else:
                text = json.dumps(item)
                prompt_tokens += len(item) if isinstance(item, list) else 1
            vector = _embedding(text, dimensions)
            encoded: Any = vector
            if use_base64:
                encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        payload = {
            "object": "list",
            "data": data,
            "model": str(body.get("model") or "text-embedding-3-small"),
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
        self.server.owner._record_response(payload)
        self._send_json(200, payload, {})
