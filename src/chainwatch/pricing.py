"""Cost in USD from token usage, through genai-prices, with user overrides for private models.

Prices are looked up on the writer thread. A model genai-prices does not know, or a call
without token counts, gets no cost (NULL) and a note saying why; never a made-up zero.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from .spans import Usage


class ModelPrice(BaseModel):
    """A user's own price for a model, in USD per million tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cached_input_per_mtok: float | None = Field(default=None, ge=0)


PriceTable = Mapping[str, ModelPrice]


def validate_prices(prices: Mapping[str, ModelPrice | Mapping[str, float]] | None) -> PriceTable:
    """Check user price overrides at construction time (keys are model names)."""
    if not prices:
        return {}
    out: dict[str, ModelPrice] = {}
    for model, price in prices.items():
        if not isinstance(model, str) or not model:
            raise ValueError(f"price override keys must be model names, got {model!r}")
        out[model] = price if isinstance(price, ModelPrice) else ModelPrice.model_validate(price)
    return out


@functools.lru_cache(maxsize=8192)
def _genai_price(
    model: str, provider: str | None, prompt: int, completion: int, cached: int
) -> tuple[float | None, str | None]:
    from genai_prices import Usage as GUsage
    from genai_prices import calc_price

    usage = GUsage(input_tokens=prompt, output_tokens=completion, cache_read_tokens=cached or None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            try:
                result = calc_price(usage, model, provider_id=provider)
            except LookupError:
                if provider is None:
                    return None, f"unknown model: {model}"
                if provider in _SELF_HOSTED:
                    # Not the same-named model's price at a hosted provider: no price at all.
                    return None, f"self-hosted model: {model} (provider {provider})"
                try:
                    result = calc_price(usage, model)
                except LookupError:
                    return None, f"unknown model: {model} (provider {provider})"
        except Exception as exc:  # genai-prices refusing the counts, say: no cost, not no span
            return None, f"price lookup failed: {type(exc).__name__}: {exc}"[:300]
    return float(result.total_price), None


def cost_of(
    usage: Usage | None,
    model: str | None,
    provider: str | None = None,
    overrides: PriceTable | None = None,
) -> tuple[float | None, str | None]:
    """Cost in USD of one call, and a note when the cost is unknown.

    Args:
        usage: token counts of the call (prompt tokens include cached ones, as OpenAI reports).
        model: the model name the provider answered with, or the one requested.
        provider: a genai-prices provider id such as ``openai``, when known.
        overrides: user prices by model name, checked before genai-prices.

    Returns:
        ``(cost_usd, None)`` when priced, ``(None, reason)`` otherwise.

    """
    if usage is None or usage.prompt_tokens is None or usage.completion_tokens is None:
        return None, "no token usage"
    if not model:
        return None, "no model name"
    prompt = usage.prompt_tokens
    completion = usage.completion_tokens
    # Cached tokens are part of the prompt; a provider reporting more is priced at the prompt.
    cached = min(usage.cached_tokens or 0, prompt)
    if overrides:
        price = overrides.get(model)
        if price is not None:
            cached_rate = (
                price.cached_input_per_mtok
                if price.cached_input_per_mtok is not None
                else price.input_per_mtok
            )
            cost = (
                (prompt - cached) * price.input_per_mtok
                + cached * cached_rate
                + completion * price.output_per_mtok
            ) / 1_000_000
            return cost, None
    return _genai_price(model, _PROVIDERS.get(provider or "", provider), prompt, completion, cached)


# Providers whose models run on the user's own hardware: a model name they share with a
# hosted API (deepseek-r1, llama3) says nothing about what a call cost.
_SELF_HOSTED = frozenset(
    {"ollama", "vllm", "llamacpp", "llama_cpp", "lmstudio", "localai", "gpt4all", "xinference",
     "mlx", "textgen"}
)

# LangChain's ls_provider names that differ from genai-prices provider ids.
_PROVIDERS = {
    "azure": "azure",
    "google_genai": "google",
    "google_vertexai": "google",
    "bedrock": "aws",
    "amazon_bedrock": "aws",
    "mistralai": "mistral",
    "fireworks": "fireworks",
    "together": "together",
}
