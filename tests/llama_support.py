"""LlamaIndex test support: its global Settings, saved and restored around a test."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import chainwatch


@contextlib.contextmanager
def llama_settings(handler: Any = None, *, mock_models: bool = True) -> Iterator[Any]:
    """LlamaIndex's `Settings` (mock LLM and embedding by default), everything restored after.

    Also detaches `handler` from the instrumentation dispatcher, and restores the callback
    manager of the cached node parser, which setting `Settings.callback_manager` changes.
    """
    from llama_index.core import Settings
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.llms import MockLLM

    saved = {f.name: getattr(Settings, f.name) for f in dataclasses.fields(Settings)}
    parser = saved.get("_node_parser")
    parser_manager = getattr(parser, "callback_manager", None)
    if mock_models:
        Settings.llm = MockLLM(max_tokens=8)
        Settings.embed_model = MockEmbedding(embed_dim=8)
    try:
        yield Settings
    finally:
        if handler is not None:
            chainwatch.uninstrument_llama_index(handler)
        for name, value in saved.items():
            setattr(Settings, name, value)
        if parser is not None:
            parser.callback_manager = parser_manager
