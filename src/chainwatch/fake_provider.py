"""A fake OpenAI-compatible HTTP server for demos and tests.

The server speaks just enough of the OpenAI REST API (chat completions, legacy completions and
embeddings, streaming included) for the real ``openai``, ``langchain_openai`` and
``llama_index`` clients to talk to it. It only ever binds to the loopback interface and never
opens an outbound connection.

Example::

    with FakeOpenAI() as server:
        server.queue(Reply(content="Hello there!", prompt_tokens=12, completion_tokens=3))
        llm = ChatOpenAI(base_url=server.base_url, api_key="sk-fake", model="gpt-4o-mini")
        llm.invoke("hi").content  # "Hello there!"
"""

from __future__ import annotations

import threading
from collections import deque
from types import TracebackType
from typing import Any

__all__ = [
    "FakeOpenAI",
    "Reply",
    "count_completion_tokens",
    "count_prompt_tokens",
    "demo_responder",
]

from .fake_http import _Handler, _Server
from .fake_replies import (
    Reply,
    Responder,
    count_completion_tokens,
    count_prompt_tokens,
    demo_responder,
)


class FakeOpenAI:
    """A fake OpenAI-compatible server on ``127.0.0.1`` with an ephemeral port.

    Replies come, in order of precedence, from the FIFO :meth:`queue`, the ``responder``, the
    ``default`` reply, and finally :func:`demo_responder`. Embeddings are always answered with
    deterministic hash-based vectors and do not consume replies.

    Attributes:
        requests: Every JSON request body received, with a ``"path"`` key added.
        responses: For each successful non-streaming response, the exact JSON body sent; for
            each stream, ``{"stream": True, "usage": {...}, "content": "..."}`` (``usage`` is
            the usage computed for the reply, sent when the client asked for it).

    """

    def __init__(self, responder: Responder | None = None, *, default: Reply | None = None):
        self.responder = responder
        self.default = default
        self.requests: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._ids = 0
        self._call_ids = 0

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ``http://127.0.0.1:PORT/v1``.

        Raises:
            RuntimeError: If the server is not running.

        """
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def port(self) -> int:
        """The TCP port the server listens on.

        Raises:
            RuntimeError: If the server is not running.

        """
        if self._server is None:
            raise RuntimeError("FakeOpenAI is not running; call start() first")
        return int(self._server.server_address[1])

    @property
    def running(self) -> bool:
        """Whether the server is currently accepting requests."""
        return self._server is not None

    def queue(self, *replies: Reply) -> None:
        """Append replies to the FIFO used before the responder and the default.

        Args:
            *replies: Replies to hand out, one per chat or completion request.

        """
        with self._lock:
            self._queue.extend(replies)

    def start(self) -> FakeOpenAI:
        """Start serving in a daemon thread; does nothing if already running.

        Returns:
            This server, for chaining.

        """
        with self._lock:
            if self._server is not None:
                return self
            server = _Server(("127.0.0.1", 0), _Handler)
            server.owner = self
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"FakeOpenAI:{server.server_address[1]}",
                daemon=True,
            )
            self._server, self._thread = server, thread
        thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket; safe to call more than once."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        if self.responder is not None:
            return self.responder(body)
        if self.default is not None:
            return self.default
        return demo_responder(body)

    def _record_request(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(body)

    def _record_response(self, payload: dict[str, Any]) -> None:
        with self._lock:
            self.responses.append(payload)

    def _next_id(self, prefix: str) -> str:
        with self._lock:
            self._ids += 1
            return f"{prefix}fake{self._ids:08d}"

    def _next_call_id(self) -> str:
        with self._lock:
            self._call_ids += 1
            return f"call_{self._call_ids}"
