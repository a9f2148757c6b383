"""HTTP for backends that call model servers (OpenAI-compatible APIs, ComfyUI): one place that
turns transport and status errors into StageErrors the scheduler understands.

    429, 408, 5xx, timeouts, refused connections   retryable (with Retry-After when given)
    other 4xx                                      not retryable (the request itself is wrong)

Only the standard library: a backend machine needs nothing more to talk to a server. Messages
carry the method, the URL's path and a short excerpt of the body, never request headers (keys). A
redirect is followed only to http(s), and never carries the request's Authorization header to
another origin (urllib's own handler copies every header to wherever the server points). An error
for an HTTP answer carries its status as ``status`` (None for transport errors).
"""

from __future__ import annotations

import email.utils
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workers.api import StageError

_RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self, what: str) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StageError(
                f"{what}: the server answered {self.status} with a body that is not JSON ({exc}): {excerpt(self.body)}",
                retryable=True,
            ) from None


def excerpt(body: bytes, limit: int = 300) -> str:
    text = body.decode("utf-8", "replace").strip().replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "…"


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def http_url(value: str, example: str) -> str:
    """A server's base URL from settings: http(s) with a host, without a trailing slash."""
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http(s) URL of {example}")
    return value.rstrip("/")


def origin(url: str) -> tuple[str, str]:
    """(scheme, host:port) of ``url``: where a key may go."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def shown(url: str) -> str:
    """A URL as errors may show it: without userinfo, query (a signature) or fragment."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


class Redirects(urllib.request.HTTPRedirectHandler):
    """Follows http(s) redirects only, and never carries the key to another origin."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise StageError(f"{self.what}: redirected to {shown(newurl)}, not an http(s) URL", retryable=False)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and origin(newurl) != origin(req.full_url):
            new.remove_header("Authorization")
        return new


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an error from ``call`` reports, if it was an answer."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def join(base: str, path: str) -> str:
    """``base`` (http://host:port/v1) + ``path`` (chat/completions), with exactly one slash."""
    return base.rstrip("/") + "/" + path.lstrip("/")


def call(
    method: str,
    url: str,
    *,
    what: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    query: Mapping[str, str] | None = None,
) -> Response:
    """One HTTP request; ``body`` is sent as JSON unless it is bytes. Raises StageError as above."""
    if query:
        url = url + ("&" if "?" in url else "?") + urllib.parse.urlencode(query)
    data, hdrs = None, dict(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    where = f"{method} {urllib.parse.urlsplit(url).path}"
    try:
        with urllib.request.build_opener(Redirects(what)).open(req, timeout=timeout) as resp:
            return Response(resp.status, dict(resp.headers.items()), resp.read())
    except urllib.error.HTTPError as exc:
        payload = exc.read() if exc.fp else b""
        wait = retry_after(exc.headers.get("Retry-After") if exc.headers else None)
        retryable = exc.code in _RETRYABLE
        error = StageError(
            f"{what}: {where} answered {exc.code} {exc.reason}: {excerpt(payload)}",
            retryable=retryable,
            retry_after=wait if retryable else None,
        )
        error.status = exc.code  # type: ignore[attr-defined]
        raise error from None
    except TimeoutError as exc:
        raise StageError(f"{what}: {where} timed out after {timeout:g}s", retryable=True) from exc
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise StageError(f"{what}: {where} timed out after {timeout:g}s", retryable=True) from None
        raise StageError(
            f"{what}: cannot reach {urllib.parse.urlsplit(url).netloc.rpartition('@')[2]}: {reason}", retryable=True
        ) from None
    except (ConnectionError, OSError) as exc:
        raise StageError(f"{what}: {where} failed: {exc}", retryable=True) from None
    except ValueError:  # http.client refuses a header value (its message would quote it: a key)
        raise StageError(
            f"{what}: {where}: a request header holds characters HTTP cannot carry; check the backend's key setting",
            retryable=False,
        ) from None
