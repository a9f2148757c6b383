"""Exporting a one-shot render's metrics: to a Pushgateway, or to a file for node_exporter's textfile
collector. Both keep counting across renders: a render's counters and histograms are added to those
the gateway's group (or the file) already holds, so ``increase()`` over them counts every run.

With farm.observe.metrics, the only module that imports prometheus_client.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import tempfile
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry, push_to_gateway, write_to_textfile
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families


def push(
    registry: CollectorRegistry,
    gateway: str,
    job: str = "farm-render",
    instance: str | None = None,
    timeout: float = 10.0,
) -> None:
    """Push ``registry`` to a Pushgateway, grouped by ``job`` and ``instance`` (default: this host's name).

    A Pushgateway keeps the last push of each group, so counters are added to what this group
    pushed before: the group's counters only grow, and ``increase()`` over them counts every run.
    """
    grouping = {"instance": instance or socket.gethostname()}
    url = gateway if "://" in gateway else f"http://{gateway}"
    group_id = hashlib.sha256(f"{url}|{job}|{grouping['instance']}".encode()).hexdigest()[:16]
    with _locked(Path(tempfile.gettempdir()) / f"farm-push-{group_id}.lock"):
        with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=timeout) as resp:
            text = resp.read().decode("utf-8")
        previous = _previous(text, {"job": job, **grouping})
        push_to_gateway(url, job, _Accumulated(registry, previous), grouping_key=grouping, timeout=timeout)


def write_textfile(registry: CollectorRegistry, path: str | os.PathLike) -> None:
    """Write ``registry`` for node_exporter's textfile collector (name it ``*.prom``), adding counters to the file's."""
    path = Path(path)
    with _locked(path.with_name(path.name + ".lock")):
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        write_to_textfile(str(path), _Accumulated(registry, _previous(text, {})))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One writer at a time on this machine (two renders finishing together must not lose a count)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _previous(text: str, group: Mapping[str, str]) -> dict[tuple[str, tuple], float]:
    """The counter and histogram samples of the farm in an exposition ``text`` that belong to
    ``group`` (the grouping labels, which are then dropped): (sample name, labels) -> value."""
    out: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(text):
        if family.type not in ("counter", "histogram") or not family.name.startswith("farm_"):
            continue
        for s in family.samples:
            if s.name.endswith("_created") or any(s.labels.get(k, "") != v for k, v in group.items()):
                continue
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k not in group))
            out[(s.name, labels)] = s.value
    return out


class _Accumulated:
    """A collector: a registry's samples plus earlier ones (counters and histograms add up; gauges are now's)."""

    def __init__(self, registry: CollectorRegistry, previous: Mapping[tuple[str, tuple], float]):
        self.registry, self.previous = registry, previous

    def collect(self):
        for family in self.registry.collect():
            if family.type not in ("counter", "histogram"):
                yield family
                continue
            out = Metric(family.name, family.documentation, family.type, family.unit)
            seen = set()
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                seen.add(key)
                out.add_sample(s.name, s.labels, s.value + self.previous.get(key, 0.0))
            suffixes = ("_total",) if family.type == "counter" else ("_bucket", "_count", "_sum")
            for (name, labels), value in self.previous.items():
                if name in {family.name + x for x in suffixes} and (name, labels) not in seen:
                    out.add_sample(name, dict(labels), value)
            yield out
