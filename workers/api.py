"""The contract between the farm and a stage backend.

A backend is plain code: it receives its inputs as local files and its parameters as JSON-able
values, writes files into ``out_dir`` and returns them with its usage. It knows nothing of Ray,
object storage or metrics (DESIGN.md, invariant 4); the farm persists and accounts what it returns.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol


@dataclass(frozen=True)
class Resources:
    """What one run of a backend holds while it works (Ray's task options)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    accelerator: str | None = None
    memory_mb: int = 0


@dataclass(frozen=True)
class Estimate:
    """What the scheduler expects a run to cost before it runs."""

    seconds: float
    tokens: int = 0
    gpu_seconds: float = 0.0


@dataclass
class Usage:
    """What a run actually consumed; reported with every result and accounted by the farm."""

    tokens_in: int = 0
    tokens_out: int = 0
    gpu_seconds: float = 0.0
    cpu_seconds: float = 0.0
    model: str = ""
    provider_job_id: str = ""


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

    def run(
        self, op: str, inputs: Mapping[str, Path], params: Mapping[str, Any], out_dir: Path
    ) -> StageResult: ...


class StageError(Exception):
    """A stage failed. ``retryable`` says whether running it again may succeed."""

    retryable = False

    def __init__(self, message: str, *, retryable: bool | None = None):
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


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
            f"{name} is not installed or not on PATH: install it "
            f"(Debian/Ubuntu: sudo apt-get install {package})"
        )
    return path


def run_tool(args: list[str], *, what: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a program given as an argument list (never through a shell).

    Raises ToolMissing when the program is absent and StageError, with the tail of its stderr,
    when it exits non-zero or outlives ``timeout`` (the latter retryable).
    """
    exe = require_tool(args[0])
    try:
        proc = subprocess.run(
            [exe, *args[1:]], capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise StageError(f"{what}: {args[0]} timed out after {timeout:.0f}s", retryable=True) from exc
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-8:]
        raise StageError(f"{what}: {args[0]} exited {proc.returncode}: " + " | ".join(tail))
    return proc
