"""Webhooks: episode-delivered, episode-failed and batch-finished POSTed as signed JSON.

The body is signed with HMAC-SHA256 over ``"<timestamp>.<body>"`` using the batch's secret; the
receiver checks ``X-Farm-Signature: sha256=<hex>`` and rejects stale ``X-Farm-Timestamp`` values.
Delivery is retried with exponential backoff (``send``); the outcome is journaled by the caller
(``webhook.delivered`` or ``webhook.failed``) so a restarted controller neither loses nor repeats a
delivered notification, and a failed one is counted in its batch's status. What is journaled names the
receiver by its host alone (``host_of``) and its errors never hold the URL's path, query or userinfo,
nor the secret (``Delivery.detail``).

Each notification has a stable event id (``event_id``: from its batch, kind and episode), the same on
every retry and after a controller restart, sent as ``X-Farm-Event-Id`` and as ``event_id`` in the body:
a receiver that saw it already drops it. The secret is the studio's, bound on the controller
(FARM_WEBHOOK_SECRETS); a batch cannot name another (``check_secret_env``).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from farm.errors import UsageError


@dataclass(frozen=True)
class Notification:
    id: str  # "<batch>:<kind>:<episode>", unique per thing worth telling
    url: str
    secret: str | None
    kind: str
    payload: dict
    problem: str | None = None  # why it cannot be sent at all (its studio's secret has no value): final


def event_id(note_id: str) -> str:
    """The notification's stable id for receivers to dedupe on: a digest of ``<batch>:<kind>:<episode>``,
    so the same event has the same id on every retry and restart, and different events differ."""
    return "evt_" + hashlib.sha256(note_id.encode("utf-8")).hexdigest()[:32]


def check_secret_env(studio: str, hook: Mapping[str, Any] | None, bound: Mapping[str, str]) -> None:
    """A batch's ``webhook.secret_env`` may only repeat the variable the controller binds to its studio
    (``bound``: FARM_WEBHOOK_SECRETS), never name another of the controller's variables. The answer says
    nothing of which variables exist. Raises UsageError with the fix."""
    named = (hook or {}).get("secret_env")
    if named is None or named == bound.get(studio):
        return
    raise UsageError(
        "the batch is not valid: webhook.secret_env: a batch cannot choose its webhook secret: studio "
        f"{studio!r}'s webhooks are signed with the secret the controller binds to it (FARM_WEBHOOK_SECRETS): "
        "drop webhook.secret_env"
    )


@dataclass(frozen=True)
class Delivery:
    """How sending one notification ended."""

    ok: bool
    detail: str  # the receiver's last answer ("HTTP 200", "HTTP 500"), or the last error
    attempts: int  # how many times it was sent
    host: str  # the receiver's host[:port], nothing else of its URL


def host_of(url: str) -> str:
    """The host (and port, if the URL names one) of ``url``: never its userinfo, path or query."""
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "?"
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port else host or "?"


def _scrubbed(text: str, note: Notification, host: str) -> str:
    """An error's text with the URL reduced to its host and nothing of the URL's secrets or the secret."""
    text = text.replace(note.url, host)
    try:
        parts = urllib.parse.urlsplit(note.url)
        hidden = [note.secret, parts.username, parts.password, parts.query, parts.path, parts.fragment]
    except ValueError:
        hidden = [note.secret]
    for value in sorted((v for v in hidden if v and len(v) > 1), key=len, reverse=True):
        text = text.replace(value, "***")
    return text[:300]


# cloud metadata services that are not link-local addresses (169.254.169.254 is)
_METADATA = {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}


class Refused(Exception):
    """A receiver's address the controller does not send to (link-local, a metadata service)."""


def _check_address(address: str, allow_link_local: bool) -> None:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return
    if not allow_link_local and (ip.is_link_local or ip in _METADATA):
        raise Refused(f"{ip} is a link-local or metadata address (allowed only by FARM_WEBHOOK_ALLOW_LINK_LOCAL)")


def _check_host(url: str, allow_link_local: bool) -> None:
    """Every address the URL's host resolves to, before connecting."""
    parts = urllib.parse.urlsplit(url)
    try:
        infos = socket.getaddrinfo(parts.hostname or "", parts.port or 443, proto=socket.IPPROTO_TCP)
    except OSError:
        return  # not resolvable: the request itself fails, retryably
    for *_, sockaddr in infos:
        _check_address(str(sockaddr[0]), allow_link_local)


def _opener(allow_link_local: bool) -> urllib.request.OpenerDirector:
    """urllib without redirects (a receiver cannot send the signed event elsewhere), whose connections
    check the address they reached (a name that resolved anew to a forbidden address)."""

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            return None  # urllib then raises HTTPError with the 3xx code

    class _Checked(http.client.HTTPConnection):
        def connect(self) -> None:
            super().connect()
            _check_address(self.sock.getpeername()[0], allow_link_local)

    class _CheckedTLS(http.client.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            _check_address(self.sock.getpeername()[0], allow_link_local)

    class _HTTP(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(_Checked, req)

    class _HTTPS(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(_CheckedTLS, req, context=self._context)

    return urllib.request.build_opener(_NoRedirect, _HTTP, _HTTPS)


def sign(body: bytes, secret: str, timestamp: int) -> str:
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(body: bytes, secret: str, timestamp: str, signature: str, now: float, tolerance_s: float = 300) -> bool:
    """What a receiver does: constant-time compare, and refuse replays older than ``tolerance_s``."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    return abs(now - ts) <= tolerance_s and hmac.compare_digest(sign(body, secret, ts), signature)


def deliver(note: Notification, **options) -> tuple[bool, str]:
    """``send`` the notification; return (ok, detail)."""
    outcome = send(note, **options)
    return outcome.ok, outcome.detail


def send(
    note: Notification,
    *,
    attempts: int = 5,
    base_delay_s: float = 1.0,
    timeout_s: float = 10.0,
    sleep=time.sleep,
    clock=time.time,
    allow_link_local: bool = False,
) -> Delivery:
    """POST the notification, retrying 5xx, 429 and network errors with backoff; a 4xx or 3xx answer
    (redirects are not followed), a URL that cannot be sent to, or a receiver at a link-local or
    metadata address (unless ``allow_link_local``) is final. Never raises: how it ended is the
    returned ``Delivery``."""
    host = host_of(note.url)
    if note.problem:
        return Delivery(False, note.problem, 0, host)
    opener = _opener(allow_link_local)
    stable = event_id(note.id)
    body = json.dumps(
        {"event": note.kind, "event_id": stable, **note.payload}, ensure_ascii=False, sort_keys=True
    ).encode("utf-8")
    detail = ""
    for attempt in range(attempts):
        ts = int(clock())
        headers = {
            "Content-Type": "application/json",
            "X-Farm-Event": note.kind,
            "X-Farm-Timestamp": str(ts),
            "X-Farm-Delivery": note.id,
            "X-Farm-Event-Id": stable,
        }
        if note.secret:
            headers["X-Farm-Signature"] = sign(body, note.secret, ts)
        try:
            _check_host(note.url, allow_link_local)
            request = urllib.request.Request(note.url, data=body, headers=headers, method="POST")
            with opener.open(request, timeout=timeout_s) as response:
                return Delivery(True, f"HTTP {response.status}", attempt + 1, host)
        except Refused as exc:
            return Delivery(False, f"refused: {exc}", attempt + 1, host)
        except urllib.error.HTTPError as exc:
            detail = f"HTTP {exc.code}" + (" (redirects are not followed)" if 300 <= exc.code < 400 else "")
            if exc.code < 500 and exc.code != 429:
                return Delivery(False, detail, attempt + 1, host)
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, Refused):  # the name resolved anew to a forbidden address
                return Delivery(False, f"refused: {exc.reason}", attempt + 1, host)
            detail = _scrubbed(f"{type(exc).__name__}: {exc.reason}", note, host)
        except (OSError, http.client.HTTPException) as exc:
            detail = _scrubbed(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}", note, host)
        except Exception as exc:  # a URL it cannot send to (unknown scheme, say): trying again gives the same
            return Delivery(False, _scrubbed(f"{type(exc).__name__}: {exc}", note, host), attempt + 1, host)
        if attempt + 1 < attempts:
            sleep(base_delay_s * 2**attempt)
    return Delivery(False, detail, attempts, host)
