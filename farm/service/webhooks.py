"""Webhooks: episode-delivered, episode-failed and batch-finished POSTed as signed JSON.

The body is signed with HMAC-SHA256 over ``"<timestamp>.<body>"`` using the batch's secret; the
receiver checks ``X-Farm-Signature: sha256=<hex>`` and rejects stale ``X-Farm-Timestamp`` values.
Delivery is retried with exponential backoff; the outcome is journaled by the caller so a restarted
controller neither loses nor repeats a delivered notification.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass


@dataclass(frozen=True)
class Notification:
    id: str  # "<batch>:<kind>:<episode>", unique per thing worth telling
    url: str
    secret: str | None
    kind: str
    payload: dict


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


def deliver(
    note: Notification,
    *,
    attempts: int = 5,
    base_delay_s: float = 1.0,
    timeout_s: float = 10.0,
    sleep=time.sleep,
    clock=time.time,
) -> tuple[bool, str]:
    """POST the notification, retrying 5xx, 429 and network errors with backoff. Returns (ok, detail)."""
    body = json.dumps({"event": note.kind, **note.payload}, ensure_ascii=False, sort_keys=True).encode("utf-8")
    detail = ""
    for attempt in range(attempts):
        ts = int(clock())
        headers = {
            "Content-Type": "application/json",
            "X-Farm-Event": note.kind,
            "X-Farm-Timestamp": str(ts),
            "X-Farm-Delivery": note.id,
        }
        if note.secret:
            headers["X-Farm-Signature"] = sign(body, note.secret, ts)
        request = urllib.request.Request(note.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return True, f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            detail = f"HTTP {exc.code}"
            if exc.code < 500 and exc.code != 429:
                return False, detail
        except (urllib.error.URLError, OSError) as exc:
            detail = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        if attempt + 1 < attempts:
            sleep(base_delay_s * 2**attempt)
    return False, detail
