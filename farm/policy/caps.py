"""Concurrency caps per backend, for rate-limited APIs: at most N of a backend's actions at once.

Example::

    admits({"llm-api": 8}, {"llm-api": 8}, task_on_llm_api)   # False
"""

from __future__ import annotations

from collections.abc import Mapping

from farm.policy.types import Task


def admits(caps: Mapping[str, int] | None, running_by_backend: Mapping[str, int], task: Task) -> bool:
    """Whether one more action of ``task.backend`` may start; backends without a cap always may."""
    if not caps:
        return True
    cap = caps.get(task.backend)
    return cap is None or running_by_backend.get(task.backend, 0) < cap
