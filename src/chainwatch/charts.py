"""Report charts drawn with matplotlib (the `notebook` extra), embedded as PNG data URIs.

Without matplotlib the functions return None and the report simply has no charts.
"""

from __future__ import annotations

import base64
import io
from datetime import datetime
from typing import Any


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _png(fig: Any, plt: Any) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=96)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def latency_histogram(latencies_ms: list[float]) -> str | None:
    """Distribution of model-call latencies."""
    plt = _pyplot()
    if plt is None or not latencies_ms:
        return None
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.hist(latencies_ms, bins=min(40, max(5, len(latencies_ms) // 5)), color="#5b8def")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("calls")
    ax.set_title("Model-call latency")
    return _png(fig, plt)


def cost_by_model(models: list[str], costs: list[float]) -> str | None:
    """Total cost per model."""
    plt = _pyplot()
    if plt is None or not models:
        return None
    fig, ax = plt.subplots(figsize=(6, max(2.0, 0.8 + 0.4 * len(models))))
    ax.barh(models, costs, color="#e0a030")
    ax.set_xlabel("cost (USD)")
    ax.set_title("Cost by model")
    ax.invert_yaxis()
    return _png(fig, plt)


def over_time(times: list[str], tokens: list[int | None], durations: list[float]) -> str | None:
    """Tokens and latency of each call over time."""
    plt = _pyplot()
    if plt is None or not times:
        return None
    when = [datetime.fromisoformat(t) for t in times]
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.plot(when, durations, ".", color="#5b8def", markersize=3, label="latency (ms)")
    ax.set_ylabel("latency (ms)")
    other = ax.twinx()
    known = [(w, t) for w, t in zip(when, tokens, strict=True) if t is not None]
    if known:
        other.plot([w for w, _ in known], [t for _, t in known], ".", color="#d9534f",
                   markersize=3, label="tokens")
        other.set_ylabel("tokens")
    ax.set_title("Latency and tokens over time")
    fig.autofmt_xdate()
    return _png(fig, plt)
