"""Turn arbitrary framework objects into bounded JSON text, on the writer thread only.

Nothing here imports a framework: messages, documents and nodes are recognised by shape.
Whatever cannot be converted falls back to its repr; strings are repaired (lone surrogates
become U+FFFD) and truncated with a visible marker; non-finite floats become strings, so the
stored text is always valid JSON.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import math
import sys
import threading
import uuid
from collections.abc import Callable, Mapping
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

DEFAULT_MAX_CHARS = 32_000
_MAX_DEPTH = 24
_MAX_ITEMS = 2_000
_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


def repair_text(text: str) -> str:
    """Return `text` with lone surrogates replaced so it encodes as UTF-8."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def truncate_text(text: str, limit: int) -> str:
    """Cut `text` to `limit` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[truncated {len(text) - limit:,} chars]"


def _safe_repr(obj: Any, limit: int) -> str:
    try:
        text = repr(obj)
    except Exception as exc:  # a broken __repr__ must not lose the rest of the span
        text = f"<unrepresentable {type(obj).__name__}: {type(exc).__name__}>"
    return truncate_text(repair_text(text), limit)


# Integers past ~4,300 digits do not convert to text at all (Python's limit), and long
# before that they stop being useful: kept as a note of their size.
_BIG_INT = 10**300


def _big_int(value: int) -> str:
    return f"<int of {value.bit_length():,} bits>"


class _Converter:
    __slots__ = ("cut", "left", "limit", "seen")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[int] = set()
        self.cut = 0
        # Values converted at most: a document of `limit` characters holds no more than about
        # limit / 2 of them, so a 2,000 x 1,536 list of floats stops costing time after that.
        self.left = max(100, limit // 2)

    def text(self, value: str) -> str:
        if len(value) > self.limit:
            self.cut += len(value) - self.limit
        return truncate_text(repair_text(value), self.limit)

    def convert(self, obj: Any, depth: int = 0) -> Any:
        self.left -= 1
        if self.left < 0:
            return "…"
        try:
            return self._value(obj, depth)
        except Exception as exc:
            # One value that cannot be read (its attributes raise) costs only itself.
            return f"<unserialisable {type(obj).__name__}: {type(exc).__name__}>"

    def _value(self, obj: Any, depth: int) -> Any:
        if obj is None or obj is True or obj is False:
            return obj
        kind = type(obj)
        if kind is str:
            return self.text(obj)
        if kind is int:
            return obj if -_BIG_INT < obj < _BIG_INT else _big_int(obj)
        if kind is float:
            return obj if math.isfinite(obj) else str(obj)
        if depth > _MAX_DEPTH:
            return "<max depth>"
        if isinstance(obj, (dict, list, tuple, set, frozenset)) or hasattr(obj, "__dict__"):
            marker = id(obj)
            if marker in self.seen:
                return "<cycle>"
            self.seen.add(marker)
            try:
                return self._container(obj, depth)
            finally:
                self.seen.discard(marker)
        return self._scalar(obj)

    def _scalar(self, obj: Any) -> Any:
        if isinstance(obj, enum.Enum):
            return self.convert(obj.value)
        if isinstance(obj, str):
            return self.text(str(obj))
        if isinstance(obj, bool):
            return bool(obj)
        if isinstance(obj, int):
            number = int(obj)
            return number if -_BIG_INT < number < _BIG_INT else _big_int(number)
        if isinstance(obj, float):
            value = float(obj)
            return value if math.isfinite(value) else str(value)
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return f"<{len(obj)} bytes>"
        if isinstance(obj, enum.Enum):
            return self.convert(obj.value)
        if isinstance(obj, (datetime.datetime, datetime.date, datetime.time)):
            return obj.isoformat()
        if isinstance(obj, uuid.UUID):
            return str(obj)
        return _safe_repr(obj, self.limit)

    def _container(self, obj: Any, depth: int) -> Any:
        nxt = depth + 1
        if isinstance(obj, Mapping):
            out: dict[str, Any] = {}
            for i, (key, value) in enumerate(obj.items()):
                if i >= _MAX_ITEMS or self.left <= 0:
                    out["…"] = f"{len(obj) - i} more items"
                    break
                name = key if type(key) is str else str(self._scalar(key))
                out[repair_text(name)] = self.convert(value, nxt)
            return out
        if isinstance(obj, (list, tuple, set, frozenset)):
            items = []
            for value in list(obj)[:_MAX_ITEMS]:
                if self.left <= 0:
                    break
                items.append(self.convert(value, nxt))
            if len(obj) > len(items):
                items.append(f"…{len(obj) - len(items)} more items")
            return items
        shaped = shape(obj)
        if shaped is not _UNSHAPED:
            return self.convert(shaped, nxt)
        return self._scalar(obj)

    def default(self, obj: Any) -> Any:
        """`json` encoder fallback: one level of shaping; the C encoder does the rest.

        Nothing is cut here; `_fast_json` checks the finished text and takes the careful
        path when anything would need cutting.
        """
        shaped = shape(obj)
        if shaped is not _UNSHAPED:
            return shaped
        if isinstance(obj, (set, frozenset)):
            return list(obj)
        if isinstance(obj, Mapping):
            return dict(obj)
        return self._scalar(obj)


_UNSHAPED = object()


def shape(obj: Any) -> Any:
    """Framework objects recognised by their attributes, one level deep, values unconverted.

    Returns `_UNSHAPED` for anything without a recognised shape.
    """
    try:
        attrs = obj.__dict__
    except AttributeError:
        return _UNSHAPED
    cls = type(obj).__name__
    if "content" in attrs and "type" in attrs and "Message" in cls:
        kind = str(attrs["type"])
        if kind.endswith("MessageChunk"):
            kind = kind[: -len("MessageChunk")].lower()
        role = _ROLES.get(kind) or attrs.get("role") or kind
        out = {"role": role, "content": attrs["content"]}
        for extra in ("name", "tool_calls", "tool_call_id"):
            value = attrs.get(extra)
            if value:
                out[extra] = value
        return out
    if "page_content" in attrs:
        return {"content": attrs["page_content"], "metadata": attrs.get("metadata") or {}}
    if "node" in attrs and "score" in attrs:
        node = attrs["node"]
        return {
            "id": getattr(node, "node_id", None),
            "score": attrs["score"],
            "text": _node_text(node),
            "metadata": getattr(node, "metadata", None) or {},
        }
    if "id_" in attrs and "embedding" in attrs:
        metadata = attrs.get("metadata") or {}
        return {"id": attrs["id_"], "text": _node_text(obj), "metadata": metadata}
    if "role" in attrs and "blocks" in attrs:
        role = attrs["role"]
        return {"role": getattr(role, "value", role), "content": getattr(obj, "content", None)}
    if cls in ("ChatResponse", "CompletionResponse"):
        out = {"message": attrs.get("message") or attrs.get("text")}
        if attrs.get("additional_kwargs"):
            out["additional_kwargs"] = attrs["additional_kwargs"]
        return out
    if "template_vars" in attrs and ("template" in attrs or "default_template" in attrs):
        # A LlamaIndex prompt template: its text and the variables filled in so far, not the
        # whole pydantic model (mappings, parsers, selector conditionals).
        template = attrs.get("template")
        if template is None:
            template = getattr(attrs["default_template"], "template", None)
        return {"template": template, "kwargs": attrs.get("kwargs") or {}}
    if cls.endswith("PromptValue"):
        if "messages" in attrs:
            return attrs["messages"]
        if "text" in attrs:
            return attrs["text"]
    if isinstance(obj, enum.Enum):
        return obj.value
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name, None) for f in dataclasses.fields(obj)}
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        try:
            return dump()
        except Exception:
            return _UNSHAPED
    return _UNSHAPED


def _node_text(node: Any) -> Any:
    getter = getattr(node, "get_content", None)
    if callable(getter):
        try:
            return getter()
        except Exception:
            return getattr(node, "text", None)
    return getattr(node, "text", None)


def to_jsonable(obj: Any, limit: int = DEFAULT_MAX_CHARS) -> Any:
    """Convert `obj` to plain JSON types, never raising."""
    return _convert(obj, limit)[0]


def _convert(obj: Any, limit: int) -> tuple[Any, int]:
    converter = _Converter(limit)
    try:
        return converter.convert(obj), converter.cut
    except Exception as exc:
        return f"<unserialisable {type(obj).__name__}: {type(exc).__name__}>", 0


# Quick encodings shape framework objects with a converter that cuts nothing (no limit), so
# it keeps no state; the finished text's length decides whether cutting is due.
_QUICK_DEFAULT = _Converter(sys.maxsize).default
_QUICK_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, default=_QUICK_DEFAULT)
_local = threading.local()


def _quick_encoder() -> Callable[[Any], str]:
    """This thread's C encoder, built once instead of once per document as `json` does."""
    if c_make_encoder is None:
        return _QUICK_ENCODER.encode
    make: Any = c_make_encoder
    # Same arguments `JSONEncoder.iterencode` passes: circular check, no indent, no sorting,
    # no skipped keys, NaN refused.
    encoder = make({}, _QUICK_DEFAULT, encode_basestring, None, ": ", ", ", False, False, False)

    def encode(obj: Any) -> str:
        try:
            return "".join(encoder(obj, 0))
        except BaseException:
            # After a failure the circular-reference markers may be stale: start afresh.
            _local.encode = None
            raise

    return encode


def _surely_too_long(obj: Any, limit: int) -> bool:
    """A glance (down the first items, three levels) at whether `obj` has over `limit` values.

    A list of 2,000 embeddings of 1,536 floats would take the C encoder seconds, all under
    the interpreter lock, to make text that is then cut to `limit` characters anyway.
    """
    kind = type(obj)
    if kind is str:
        return len(obj) > limit
    size = 1
    for _ in range(3):
        if kind is list or kind is tuple:
            if not obj:
                break
            size *= len(obj)
            obj = obj[0]
        elif kind is dict:
            if not obj:
                break
            size *= len(obj)
            obj = next(iter(obj.values()))
        else:
            break
        kind = type(obj)
    return size > limit


def _fast_json(obj: Any, limit: int) -> str | None:
    """The C encoder, with one level of shaping per framework object; None when not right.

    Right means: no NaN, no cycle, no lone surrogate, nothing the shapes do not cover, and
    short enough that nothing needs cutting. Anything else takes the careful path.
    """
    if _surely_too_long(obj, limit):
        return None  # the C encoder would hold the interpreter for it, only to be cut
    encode = getattr(_local, "encode", None)
    if encode is None:
        encode = _local.encode = _quick_encoder()
    try:
        text = encode(obj)
    except Exception:
        # Whatever went wrong (a cycle, NaN, an object whose attributes raise), the careful
        # path knows how to keep the rest of the document.
        return None
    if len(text) > limit:
        return None
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return text


def to_json(obj: Any, limit: int = DEFAULT_MAX_CHARS) -> str | None:
    """Bounded JSON text for `obj`; `None` stays SQL NULL.

    When the whole document is still longer than `limit` after cutting long strings, it is
    replaced by an object that says so and keeps a preview.
    """
    if obj is None:
        return None
    fast = _fast_json(obj, limit)
    if fast is not None:
        return fast
    value, cut = _convert(obj, limit)
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    for smaller in (limit // 8, limit // 64, 100):
        if len(text) <= limit or smaller < 100:
            break
        # Cut long strings harder before giving up the structure (ids, scores, roles).
        value, cut = _convert(obj, smaller)
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    if len(text) > limit:
        original = len(text) + cut
        keep = max(limit - 200, 0)
        for _ in range(4):
            # The preview is JSON inside JSON: its quotes and backslashes are escaped again,
            # so it is shortened until the whole stays within `limit`.
            wrapped = json.dumps(
                {
                    "_truncated": True,
                    "original_chars": original,
                    "preview": f"{text[:keep]}…[truncated {original - keep:,} chars]",
                },
                ensure_ascii=False,
            )
            if len(wrapped) <= limit or keep == 0:
                break
            keep = max(keep - (len(wrapped) - limit) - 100, 0)
        text = wrapped
    return text
