"""Token usage, model, provider and finish reason from framework objects, as pure functions.

Objects are read by shape (attributes and dict keys), so nothing here imports a framework and
every function can be tested with plain values. A count that is absent stays None.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .spans import Usage


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number >= 0 else None


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def from_usage_metadata(meta: Any, source: str = "usage_metadata") -> Usage | None:
    """LangChain's `usage_metadata` (input/output tokens and their details)."""
    if not meta:
        return None
    prompt = _int(_get(meta, "input_tokens"))
    completion = _int(_get(meta, "output_tokens"))
    if prompt is None and completion is None:
        return None
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=_int(_get(meta, "total_tokens")),
        cached_tokens=_int(_get(_get(meta, "input_token_details"), "cache_read")),
        reasoning_tokens=_int(_get(_get(meta, "output_token_details"), "reasoning")),
        source=source,
    )


def from_provider_usage(raw: Any, source: str = "provider") -> Usage | None:
    """A provider's usage object: OpenAI style (prompt/completion) or Anthropic style."""
    if not raw:
        return None
    prompt = _int(_get(raw, "prompt_tokens"))
    completion = _int(_get(raw, "completion_tokens"))
    if prompt is None and completion is None:
        prompt = _int(_get(raw, "input_tokens"))
        completion = _int(_get(raw, "output_tokens"))
        if prompt is None and completion is None:
            return None
        cache_read = _int(_get(raw, "cache_read_input_tokens"))
        cache_write = _int(_get(raw, "cache_creation_input_tokens")) or 0
        # Anthropic counts cache reads and writes outside input_tokens; the prompt is all three.
        if prompt is not None and (cache_read or cache_write):
            prompt = prompt + (cache_read or 0) + cache_write
        return Usage(prompt, completion, _int(_get(raw, "total_tokens")), cache_read, None, source)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=_int(_get(raw, "total_tokens")),
        cached_tokens=_int(_get(_get(raw, "prompt_tokens_details"), "cached_tokens")),
        reasoning_tokens=_int(_get(_get(raw, "completion_tokens_details"), "reasoning_tokens")),
        source=source,
    )


def _generations(response: Any) -> list[Any]:
    out: list[Any] = []
    for group in getattr(response, "generations", None) or ():
        out.extend(group or ())
    return out


def llm_result_usage(response: Any) -> Usage | None:
    """Usage of a LangChain `LLMResult`: its first message's usage_metadata, else llm_output.

    One run is one request: with ``n > 1`` choices, providers' clients copy the request's
    usage onto every choice's message, so the first one is the run's (as LangChain's own
    `UsageMetadataCallbackHandler` reads it), not their sum.
    """
    for gen in _generations(response):
        usage = from_usage_metadata(getattr(getattr(gen, "message", None), "usage_metadata", None))
        if usage is not None:
            return usage
    llm_output = getattr(response, "llm_output", None) or {}
    raw = llm_output.get("token_usage") or llm_output.get("usage")
    return from_provider_usage(raw, "llm_output")


def llm_result_model(response: Any) -> str | None:
    """Model name the provider answered with."""
    for gen in _generations(response):
        meta = getattr(getattr(gen, "message", None), "response_metadata", None) or {}
        name = meta.get("model_name") or meta.get("model")
        if name:
            return str(name)
    llm_output = getattr(response, "llm_output", None) or {}
    name = llm_output.get("model_name") or llm_output.get("model")
    return str(name) if name else None


def llm_result_finish_reason(response: Any) -> str | None:
    """Why generation stopped (the first generation's reason)."""
    for gen in _generations(response):
        info = getattr(gen, "generation_info", None) or {}
        reason = info.get("finish_reason") or info.get("stop_reason")
        if not reason:
            meta = getattr(getattr(gen, "message", None), "response_metadata", None) or {}
            reason = meta.get("finish_reason") or meta.get("stop_reason") or meta.get("done_reason")
        if reason:
            return str(reason)
    return None


def requested_model(
    metadata: Mapping[str, Any] | None, invocation_params: Mapping[str, Any] | None
) -> tuple[str | None, str | None]:
    """Model and provider a LangChain model call asked for (ls_* metadata, then params)."""
    model = provider = None
    if metadata:
        model = metadata.get("ls_model_name")
        provider = metadata.get("ls_provider")
    if invocation_params:
        model = model or invocation_params.get("model") or invocation_params.get("model_name")
        provider = provider or invocation_params.get("_type")
    return (str(model) if model else None, str(provider) if provider else None)


def response_usage(response: Any) -> Usage | None:
    """Usage of a LlamaIndex `ChatResponse` / `CompletionResponse`: `raw` usage first."""
    raw = getattr(response, "raw", None)
    usage = from_provider_usage(_get(raw, "usage"), "raw")
    if usage is not None:
        return usage
    extra = getattr(response, "additional_kwargs", None)
    return from_provider_usage(extra, "additional_kwargs") if extra else None


def response_model(response: Any) -> str | None:
    """Model a LlamaIndex response's provider answered with."""
    model = _get(getattr(response, "raw", None), "model")
    return str(model) if model else None


def response_finish_reason(response: Any) -> str | None:
    """Finish reason of a LlamaIndex response (OpenAI `choices`, Anthropic `stop_reason`)."""
    raw = getattr(response, "raw", None)
    choices = _get(raw, "choices")
    if choices:
        reason = _get(choices[0], "finish_reason")
        if reason:
            return str(reason)
    reason = _get(raw, "stop_reason") or _get(raw, "finish_reason")
    return str(reason) if reason else None
