"""What every backend calling an OpenAI-compatible server shares: its settings, the Bearer key,
the requests, and ``check`` (does the server serve the model?)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import Field, field_validator

from workers._http import Response, call, http_url, join
from workers.api import StageError, secret
from workers.configured import BackendSettings


class OpenAISettings(BackendSettings):
    """What every backend calling an OpenAI-compatible server is configured with."""

    base_url: str = Field(description="the API root, ending in /v1 for most servers: http://vllm:8000/v1")
    model: str = Field(min_length=1)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value, "the API root, such as http://vllm:8000/v1")


class OpenAIClient:
    """Requests to one configured OpenAI-compatible server, with its key and timeout.

    The key is read when a request is made (``api_key_env`` names a variable on the machine doing
    the work), sent only as ``Authorization: Bearer``, and cut out of any error message: some
    servers quote the key they refused.
    """

    def __init__(self, name: str, settings: OpenAISettings, config: Mapping[str, Any], what: str):
        self.name, self.settings, self.what = name, settings, what
        self._config = dict(config)

    def request(self, method: str, path: str, body: Any = None, content_type: str | None = None) -> Response:
        """One request with the key; ``body`` is JSON, or bytes sent as ``content_type`` (a multipart form)."""
        key = secret(self._config).strip()  # a key file's or secret's trailing newline
        if not (key.isascii() and key.isprintable()):
            raise StageError(
                f"{self.what}: the API key (backends.{self.name}.api_key or api_key_env) holds "
                "characters an HTTP header cannot carry; set it to the key alone",
                retryable=False,
            )
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            return call(
                method,
                join(self.settings.base_url, path),
                what=self.what,
                body=body,
                headers=headers,
                timeout=self.settings.timeout_s,
            )
        except StageError as exc:
            message = str(exc)
            if not key or key not in message:
                raise
            raise StageError(
                message.replace(key, "[api key]"), retryable=exc.retryable, retry_after=exc.retry_after
            ) from None

    def chat(self, body: Any) -> tuple[dict[str, Any], dict[str, Any], str]:
        """``POST /chat/completions``: (its first choice, the whole answer, what to call it in errors).
        An answer without ``choices[0].message`` is a retryable StageError."""
        what = f"{self.what}: POST /chat/completions"
        data = self.request("POST", "chat/completions", body).json(what)
        try:
            choice = data["choices"][0]
            choice["message"]
        except (KeyError, IndexError, TypeError):
            raise StageError(
                f"{what}: the answer is not a chat completion (no choices[0].message): {json.dumps(data)[:300]}",
                retryable=True,
            ) from None
        return choice, data, what

    def check_model(self) -> str:
        """``GET /models``: is the server there, does it take the key, does it serve the model?"""
        url, model = self.settings.base_url, self.settings.model
        listing = self.request("GET", "models").json(f"{self.what}: GET /models")
        data = listing.get("data") if isinstance(listing, dict) else None
        served = [str(m.get("id")) for m in data if isinstance(m, dict)] if isinstance(data, list) else []
        if model not in served:
            shown = ", ".join(served[:20]) + (f" and {len(served) - 20} more" if len(served) > 20 else "")
            raise StageError(
                f"{self.what}: {url} does not serve model {model!r} (it serves: {shown or 'nothing'}); "
                f"set backends.{self.name}.model to one of those",
                retryable=False,
            )
        return f"model {model} available at {url}"
