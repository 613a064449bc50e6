"""The model an investigation runs: the built-in analyst, or any pydantic-ai model string.

`builtin` (the default) needs no network. `openai:<name>` with a base URL (and a key) talks to
any OpenAI-compatible chat-completions server: Ollama, vLLM, LiteLLM, a proxy. Other strings
(`anthropic:...`, `google-gla:...`) go to pydantic-ai, which reads the provider's usual
environment variables for keys.
"""

from __future__ import annotations

from pydantic_ai.models import Model, infer_model
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from responder.analyst import MODEL_NAME, builtin_model


class UnknownModel(ValueError):
    """The model string names no model pydantic-ai knows (the message says which)."""


def model_for(name: str, *, base_url: str | None = None, api_key: str | None = None) -> Model:
    if name == MODEL_NAME:
        return builtin_model()
    provider, _, model_name = name.partition(":")
    if base_url is not None or (provider == "openai" and api_key is not None):
        if provider not in ("openai", "") or not model_name:
            raise UnknownModel(
                f"VIGIL_MODEL_BASE_URL is for OpenAI-compatible servers: "
                f"VIGIL_MODEL must be openai:<model name>, not {name!r}"
            )
        # No key for a local server (Ollama, vLLM) is fine; the client insists on one.
        openai = OpenAIProvider(base_url=base_url, api_key=api_key or "none")
        return OpenAIChatModel(model_name, provider=openai)
    try:
        return infer_model(name)
    except Exception as exc:  # pydantic-ai's own errors vary by provider; its message says why
        raise UnknownModel(f"VIGIL_MODEL={name!r}: {exc}") from None
