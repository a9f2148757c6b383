"""structlog configuration: readable on a terminal, JSON lines otherwise; credentials never printed.

``configure`` is called once per entry point (the CLI, the controller actor, each Ray worker). Context
is carried by binding: Ray moves work between processes, so the batch, episode, stage and action
key travel with the action and are bound where the work runs (``action_context``).

Credentials are kept out in two ways: values of keys that name a secret (``secret``, ``password``,
``token``, ``access_key``...) are masked, and every known secret string registered with ``hide``
(the S3 keys, webhook secrets) is masked wherever it appears, in any value, nested structure or
formatted traceback. The userinfo of any URL (``http://user:password@host``) is masked too.

Example::

    configure(level="INFO", secrets=[settings.s3_secret_key.get_secret_value()])
    log = structlog.get_logger().bind(**action_context(action, batch="acme-20260101-000000-1a2b3c4d"))
    log.info("action.started")   # {"event": "action.started", "batch": ..., "episode": ..., "stage": ..., "action": ...}
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import structlog

MASK = "**********"
_SECRET_KEYS = re.compile(r"(secret|password|passwd|token|access_key|credential|authorization|api_key)", re.I)
_NOT_SECRET = frozenset({"tokens_in", "tokens_out", "tokens", "est_tokens"})
# the userinfo of a URL (``http://user:password@host/``), masked wherever a URL is printed
_USERINFO = re.compile(r"((?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{0,31}://)[^/?#\s@]+@")
_MIN_SECRET = 4  # shorter strings would mask ordinary words; real credentials are far longer
_secrets: set[str] = set()


def hide(*values: str | None) -> None:
    """Register secret strings: from now on they are masked wherever they appear in a log line."""
    for value in values:
        if value and len(value) >= _MIN_SECRET:
            _secrets.add(value)


def mask(text: Any) -> str:
    """``text`` with every registered secret masked: for messages printed outside structlog."""
    return _scrub(str(text))


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        if "@" in value:
            value = _USERINFO.sub(r"\1***@", value)
        for secret in _secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, Mapping):
        return {k: (MASK if _secret_key(k) else _scrub(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_scrub(v) for v in value]
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return _scrub(str(value))  # anything else is printed as text: scrub that text


def _secret_key(key: Any) -> bool:
    return isinstance(key, str) and key not in _NOT_SECRET and bool(_SECRET_KEYS.search(key))


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """structlog processor: mask secret-named keys and every registered secret string."""
    return {k: (MASK if _secret_key(k) else _scrub(v)) for k, v in event.items()}


def action_context(action, batch: str | None) -> dict[str, Any]:
    """What every log line about an action carries: batch, studio, series, episode, stage, action, label.

    ``action`` is the 12-character prefix of the action's key (the manifest and the report use the
    same prefix); ``batch`` is the batch that was charged for it (None for ``farm render``).
    """
    ctx = action.context
    return {
        "batch": batch,
        "studio": ctx.get("studio"),
        "series": ctx.get("series"),
        "episode": ctx.get("episode"),
        "stage": action.stage,
        "action": action.key[:12],
        "label": action.label,
    }


class _CurrentStderr:
    """Standard error as it is when a line is written, not when logging was configured (a host or a
    test may replace it, and close the one it replaced)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(
    level: str = "WARNING", json: bool | None = None, stream=None, secrets: Iterable[str | None] = ()
) -> None:
    """Configure structlog for this process.

    Args:
        level: the lowest level printed (DEBUG, INFO, WARNING, ERROR).
        json: JSON lines when True; key=value lines for people when False; by default JSON unless
            ``stream`` is a terminal.
        stream: where lines go (default: standard error).
        secrets: strings to mask wherever they appear (added to those already registered by ``hide``).
    """
    tty = bool(getattr(stream or sys.stderr, "isatty", lambda: False)())
    stream = stream or _CurrentStderr()
    json = not tty if json is None else json
    hide(*secrets)
    renderer = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if json
        else structlog.dev.ConsoleRenderer(colors=tty, exception_formatter=structlog.dev.plain_traceback)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,  # the traceback becomes text, so it is scrubbed too
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
