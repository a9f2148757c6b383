"""The contract between the farm and a stage backend.

A backend is plain code: it receives its inputs as local files and its parameters as JSON-able
values, writes files into ``out_dir`` and returns them with its usage. It knows nothing of Ray,
object storage or metrics (DESIGN.md, invariant 4); the farm persists and accounts what it returns.

Backends that take settings (a model server's URL, a model path) are *configured*: built as
``Kind(name, config)`` from a mapping in settings, validated there (``ConfigError``), with a
``version`` that digests every setting that changes the output (see ``config_version``) and never
a secret. A configured backend may also offer:

- ``check() -> str``: is it reachable and ready? (``farm backends``); raises StageError if not.
- ``max_batch > 1`` with ``batch_key(op, params)`` and ``run_batch(op, items)``: the GPU actor
  groups up to ``max_batch`` concurrent actions with equal ``batch_key`` into one call.
- ``resumable = True``: ``run`` receives ``job=`` a ``JobRecord`` to save a provider's job id in
  before waiting on it, so a restarted farm resumes waiting instead of submitting (and paying) twice.

Errors a backend raises::

    StageError              the work failed; ``retryable`` tells the scheduler whether to try again
      └── ToolMissing       a program the backend needs (ffmpeg, espeak-ng) is not installed

Example::

    class Echo:
        stage, name, version = "script", "echo", "1"
        ops = ("script",)
        resources = Resources(num_cpus=1)

        def estimate(self, op, params):
            return Estimate(seconds=0.1)

        def run(self, op, inputs, params, out_dir):
            path = out_dir / "script.json"
            path.write_text(json.dumps(params))
            return StageResult(files={"script": path})
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Resources:
    """What one run of a backend holds while it works (Ray's task options)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    accelerator: str | None = None
    memory_mb: int = 0
    # model residency (farm/policy/residency.py): how long loading the model takes on a fresh worker
    # (an estimate, then learned from the workers' reports) and the GPU memory it holds (0: unknown,
    # a whole GPU; two models whose memory fits one GPU may share it)
    load_seconds: float = 0.0
    gpu_memory_gb: float = 0.0


@dataclass(frozen=True)
class Estimate:
    """What the scheduler expects a run to cost before it runs."""

    seconds: float
    tokens: int = 0
    gpu_seconds: float = 0.0


@dataclass
class Usage:
    """What a run actually consumed; reported with every result and accounted by the farm.

    ``cpu_seconds``: the farm charges at least the CPU it measures around ``run`` (the calling
    thread's and its finished child programs'), so a backend that works in that thread, or runs
    programs, may leave it 0; one that works on other threads or processes (torch) reports its own
    measure, and the larger of the two is kept (a batched call's backend divides its own).

    ``gpu_seconds`` is the model's work; ``load_seconds`` the wall time this run spent loading the
    model before it (weights, encoders), not part of ``gpu_seconds`` and never charged as spend. The
    warm worker (farm.runtime.workers) adds the time it took to build the backend to the first action
    it runs; a backend that loads lazily, in its first ``run``, reports that load here itself."""

    tokens_in: int = 0
    tokens_out: int = 0
    gpu_seconds: float = 0.0
    cpu_seconds: float = 0.0
    model: str = ""
    provider_job_id: str = ""
    load_seconds: float = 0.0


@dataclass
class StageResult:
    """The files a run wrote (output name -> path inside out_dir), small facts about them, usage."""

    files: dict[str, Path]
    meta: dict[str, Any] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)


class Backend(Protocol):
    stage: str
    name: str
    version: str
    ops: tuple[str, ...]
    resources: Resources

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate: ...

    def run(self, op: str, inputs: Mapping[str, Path], params: Mapping[str, Any], out_dir: Path) -> StageResult: ...


class StageError(Exception):
    """A stage failed. ``retryable`` says whether running it again may succeed; ``retry_after``
    (seconds) is the earliest a retry may start, when the provider said so (HTTP Retry-After)."""

    retryable = False

    def __init__(self, message: str, *, retryable: bool | None = None, retry_after: float | None = None):
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable
        self.retry_after = retry_after


class ConfigError(ValueError):
    """A configured backend's settings are wrong; the message names the setting and the fix."""


@dataclass
class BatchItem:
    """One action of a batched call: its local inputs, parameters and scratch folder."""

    inputs: Mapping[str, Path]
    params: Mapping[str, Any]
    out_dir: Path


class JobRecord(Protocol):
    """Durable state of one action's job at a provider (ComfyUI's prompt id), kept by the farm."""

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: Mapping[str, Any]) -> None:
        """Durably record ``state``; returns only once a restarted farm would read it back."""
        ...


class NoRecord:
    """A JobRecord that keeps nothing: a job run outside the farm (a test, a bench) is not resumed."""

    def load(self) -> dict[str, Any] | None:
        return None

    def save(self, state: Mapping[str, Any]) -> None:
        pass


def config_version(kind_version: str, config: Mapping[str, Any], affects: tuple[str, ...]) -> str:
    """A configured backend's version: its code's version and a digest of the settings in
    ``affects`` (those that change its output: model, steps, voices), never URLs or keys.

    >>> config_version("1", {"model": "m", "base_url": "http://x"}, ("model",)) == config_version("1", {"model": "m"}, ("model",))
    True
    """
    import hashlib
    import json

    chosen = {k: config[k] for k in affects if config.get(k) is not None}
    digest = hashlib.sha256(json.dumps(chosen, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{kind_version}+{digest}"


def secret(config: Mapping[str, Any], field: str = "api_key") -> str:
    """A secret setting: given inline as ``field`` or, better, named as ``field + "_env"`` (the
    environment variable that holds it on the machine where the work runs)."""
    import os

    env = config.get(f"{field}_env")
    if env:
        value = os.environ.get(env)
        if value is None:
            raise StageError(f"the environment variable {env} (setting {field}_env) is not set on this machine")
        return value
    value = config.get(field) or ""
    return value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)


class ToolMissing(StageError):
    """A program the backend needs is not on PATH; the message names the package to install."""

    retryable = False


_PACKAGES = {"ffmpeg": "ffmpeg", "ffprobe": "ffmpeg", "espeak-ng": "espeak-ng"}


def require_tool(name: str) -> str:
    """Return the path of program ``name`` or raise ToolMissing naming what to install."""
    path = shutil.which(name)
    if path is None:
        package = _PACKAGES.get(name, name)
        raise ToolMissing(
            f"{name} is not installed or not on PATH: install it (Debian/Ubuntu: sudo apt-get install {package})"
        )
    return path


def children_cpu() -> float:
    """CPU-seconds this process's finished child programs (ffmpeg, espeak-ng) have used so far: a
    backend's cpu_seconds is the difference across its run."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_tool(args: list[str], *, what: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a program given as an argument list (never through a shell).

    Raises ToolMissing when the program is absent and StageError, with the tail of its stderr,
    when it exits non-zero or outlives ``timeout`` (the latter retryable).
    """
    exe = require_tool(args[0])
    try:
        proc = subprocess.run([exe, *args[1:]], capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise StageError(f"{what}: {args[0]} timed out after {timeout:.0f}s", retryable=True) from exc
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-8:]
        raise StageError(f"{what}: {args[0]} exited {proc.returncode}: " + " | ".join(tail))
    return proc
