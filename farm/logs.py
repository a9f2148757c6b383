"""structlog configuration: readable on a terminal, JSON lines otherwise; secrets never printed.

Called once per entry point. Context (batch, episode, stage, action key) is carried in the action
and bound where the work runs, since Ray moves work between processes.
"""

from __future__ import annotations

import logging
import re
import sys

import structlog

_SECRET_KEYS = re.compile(r"(secret|password|token|access_key|credential|authorization)", re.I)


def _redact(_, __, event: dict) -> dict:
    for key in list(event):
        if _SECRET_KEYS.search(key) and key not in ("tokens_in", "tokens_out"):
            event[key] = "**********"
    return event


def configure(level: str = "WARNING", json: bool | None = None, stream=None) -> None:
    stream = stream or sys.stderr
    json = not stream.isatty() if json is None else json
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
