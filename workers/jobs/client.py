"""Requests to Replicate's HTTP predictions API (or a gateway speaking it) for one configured backend.

    POST /v1/files                                multipart, field ``content``: a file object; its
                                                  ``urls.get`` is what a prediction's input takes
    POST /v1/predictions                          {"version": id, "input": {...}}: a pinned version
    POST /v1/models/{owner}/{name}/predictions    {"input": {...}}: the model's latest version
    GET  /v1/predictions/{id}                     the prediction: status starting, processing,
                                                  succeeded, failed or canceled; output; error;
                                                  metrics.predict_time
    GET  /v1/predictions?created_after=...        the account's predictions, newest first, 100 a page,
                                                  ``next`` the following page's URL
    GET  /v1/models/{owner}/{name}[/versions/{id}]  the model (``check``)

The key goes only as ``Authorization: Bearer`` and only to the API's own origin: a returned file on
another host (replicate.delivery) is fetched without it, and a redirect to another origin drops it.
It is cut out of every error message (some gateways quote the token they refused). Returned files
are streamed to disk up to a size cap; their URLs are named in errors without the query string,
which may be a signature.
"""

from __future__ import annotations

import io
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workers._http import Redirects, Response, call, excerpt, join, origin, retry_after, shown, status_of
from workers.api import StageError, secret
from workers.jobs.settings import ReplicateSettings

_CHUNK = 1 << 20
_MIME = {".mp4": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm", ".wav": "audio/wav"}


class Client:
    """One configured backend's requests: its base URL, key, timeouts and name for messages."""

    def __init__(self, name: str, settings: ReplicateSettings, config: Mapping[str, Any], what: str):
        self.name, self.settings, self.what = name, settings, what
        self._config = dict(config)
        self.origin = origin(settings.base_url)

    # -- the key ------------------------------------------------------------------------------

    def _key(self) -> str:
        key = secret(self._config).strip()  # a key file's or secret's trailing newline
        if not (key.isascii() and key.isprintable()):
            raise StageError(
                f"{self.what}: the API key (backends.{self.name}.api_key or api_key_env) holds characters "
                "an HTTP header cannot carry; set it to the token alone",
                retryable=False,
            )
        return key

    def redact(self, text: str, key: str | None = None) -> str:
        key = self._key() if key is None else key
        return text.replace(key, "[api key]") if key else text

    # -- requests -----------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """One request to ``path`` under the base URL (or to an absolute URL of the same origin)."""
        key = self._key()
        url = path if "://" in path else join(self.settings.base_url, path)
        if origin(url) != self.origin:
            raise StageError(f"{self.what}: the server pointed at {shown(url)}, outside {self.settings.base_url}")
        hdrs = {**(headers or {}), **({"Authorization": f"Bearer {key}"} if key else {})}
        try:
            return call(
                method,
                url,
                what=self.what,
                body=body,
                headers=hdrs,
                timeout=self.settings.request_timeout_s,
                query=query,
            )
        except StageError as exc:
            status = status_of(exc)
            message = self.redact(str(exc), key)
            if status in (401, 403):
                message += (
                    f" (the API key was refused: set backends.{self.name}.api_key_env to a variable, or "
                    "api_key, holding a valid API token)"
                )
            if message == str(exc):
                raise
            error = StageError(message, retryable=exc.retryable, retry_after=exc.retry_after)
            error.status = status  # type: ignore[attr-defined]
            raise error from None

    def json(self, method: str, path: str, **kw: Any) -> Any:
        where = path.split("?")[0] if "://" not in path else urllib.parse.urlsplit(path).path
        return self.request(method, path, **kw).json(f"{self.what}: {method} {where}")

    def upload(self, path: Path, filename: str) -> str:
        """``POST /files`` with ``path``'s bytes as ``content``: the file's ``urls.get``."""
        data = Path(path).read_bytes()
        mime = _MIME.get(Path(filename).suffix, "application/octet-stream")
        boundary = f"farm{uuid.uuid4().hex}"
        body = io.BytesIO()
        body.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="content"; filename="{filename}"\r\n'
            f"Content-Type: {mime}\r\n\r\n".encode()
        )
        body.write(data)
        body.write(
            f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n'
            f'Content-Type: application/json\r\n\r\n{{"farm": true}}\r\n--{boundary}--\r\n'.encode()
        )
        answer = self.json(
            "POST", "files", body=body.getvalue(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        url = (answer.get("urls") or {}).get("get") if isinstance(answer, dict) else None
        if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise StageError(
                f"{self.what}: POST /files: the answer has no urls.get: {str(answer)[:300]}", retryable=True
            )
        return url

    def create(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Create a prediction of the configured model or version with input ``values``."""
        s = self.settings
        if s.version_id is not None:
            path, body = "predictions", {"version": s.version_id, "input": dict(values)}
        else:
            owner, _, model = s.model_name.partition("/")
            path, body = f"models/{_q(owner)}/{_q(model)}/predictions", {"input": dict(values)}
        answer = self.json("POST", path, body=body)
        if not isinstance(answer, dict):
            raise StageError(f"{self.what}: POST /{path}: the answer is not a prediction: {str(answer)[:300]}")
        return answer

    def prediction(self, prediction_id: str) -> dict[str, Any] | None:
        """``GET /predictions/{id}``; None when the server does not know it (404)."""
        try:
            answer = self.json("GET", f"predictions/{_q(prediction_id)}")
        except StageError as exc:
            if status_of(exc) == 404:
                return None
            raise
        if not isinstance(answer, dict) or not isinstance(answer.get("status"), str):
            raise StageError(
                f"{self.what}: GET /predictions/{prediction_id}: not a prediction: {str(answer)[:300]}", retryable=True
            )
        return answer

    def page(self, url: str | None, created_after: str) -> tuple[list[dict[str, Any]], str | None]:
        """One page of ``GET /predictions`` (newest first): its predictions and the next page's URL."""
        if url is None:
            answer = self.json("GET", "predictions", query={"created_after": created_after})
        else:
            answer = self.json("GET", url)
        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, list):
            raise StageError(f"{self.what}: GET /predictions: not a list of predictions: {str(answer)[:300]}")
        following = answer.get("next")
        return [r for r in results if isinstance(r, dict)], following if isinstance(following, str) else None

    def describe(self) -> str:
        """``GET /models/{owner}/{name}`` (or its pinned version): one line naming what runs."""
        s = self.settings
        owner, _, model = s.model_name.partition("/")
        path = f"models/{_q(owner)}/{_q(model)}"
        if s.version_id is not None:
            path += f"/versions/{_q(s.version_id)}"
        try:
            answer = self.json("GET", path)
        except StageError as exc:
            if status_of(exc) == 404:
                setting = "version" if s.version_id else "model"
                raise StageError(
                    f"{self.what}: {s.target} is not on {s.base_url} (or this API key cannot see it); check "
                    f"backends.{self.name}.{setting}",
                    retryable=False,
                ) from None
            raise
        answer = answer if isinstance(answer, dict) else {}
        if s.version_id is not None:
            cog = answer.get("cog_version")
            return f"Replicate version {s.target} at {s.base_url}" + (f" (Cog {cog})" if cog else "")
        latest = (
            (answer.get("latest_version") or {}).get("id") if isinstance(answer.get("latest_version"), dict) else None
        )
        return f"Replicate model {s.target} at {s.base_url}: latest version {latest or '(not reported)'}"

    # -- returned files -----------------------------------------------------------------------

    def download(self, url: str, dest: Path) -> Path:
        """Stream ``url`` (a prediction's output) to ``dest``, refusing more than ``max_output_mb``."""
        cap = self.settings.max_output_mb * 2**20
        if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
            raise StageError(f"{self.what}: the output {url[:80]!r} is not an http(s) URL", retryable=False)
        key = self._key()
        headers = {"Authorization": f"Bearer {key}"} if key and origin(url) == self.origin else {}
        where = f"GET {shown(url)}"
        opener = urllib.request.build_opener(Redirects(self.what))
        try:
            with opener.open(
                urllib.request.Request(url, headers=headers), timeout=self.settings.request_timeout_s
            ) as r:
                length = r.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > cap:
                    raise StageError(
                        f"{self.what}: {where}: the output is {int(length) / 2**20:.0f} MiB; at most "
                        f"{self.settings.max_output_mb} MiB is fetched (setting max_output_mb)",
                        retryable=False,
                    )
                total = 0
                with open(dest, "wb") as f:
                    while chunk := r.read(_CHUNK):
                        total += len(chunk)
                        if total > cap:
                            raise StageError(
                                f"{self.what}: {where}: the output is over {self.settings.max_output_mb} MiB "
                                "(setting max_output_mb)",
                                retryable=False,
                            )
                        f.write(chunk)
        except urllib.error.HTTPError as exc:
            payload = exc.read() if exc.fp else b""
            retryable = exc.code >= 500 or exc.code in (408, 425, 429)
            wait = retry_after(exc.headers.get("Retry-After") if exc.headers else None) if retryable else None
            message = self.redact(f"{self.what}: {where} answered {exc.code} {exc.reason}: {excerpt(payload)}", key)
            error = StageError(message, retryable=retryable, retry_after=wait)
            error.status = exc.code  # type: ignore[attr-defined]
            raise error from None
        except TimeoutError:
            raise StageError(f"{self.what}: {where} timed out", retryable=True) from None
        except urllib.error.URLError as exc:
            raise StageError(f"{self.what}: {where} failed: {exc.reason}", retryable=True) from None
        except (ConnectionError, OSError) as exc:
            if isinstance(exc, OSError) and exc.filename is not None:
                raise
            raise StageError(f"{self.what}: {where} failed: {exc}", retryable=True) from None
        return dest


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")
