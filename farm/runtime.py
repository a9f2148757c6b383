"""The only module that speaks Ray: actions become Ray tasks, finished tasks become manifests.

``execute`` is the body of every task: fetch the input blobs, run the backend in a scratch
directory, store the output blobs, then the manifest (in that order: DESIGN.md invariant 2).
It is idempotent: an action whose manifest already exists is not run again.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import ray
import structlog

from farm import backends, logs
from farm.errors import ActionFailed, FarmError
from farm.manifest import Blob, Manifest, UsageRecord
from farm.plan import Action
from farm.settings import StoreSpec
from farm.store import ArtifactStore, open_objects
from workers.api import StageError

log = structlog.get_logger("farm.runtime")


def execute(action: Mapping[str, Any], inputs: Mapping[str, Mapping[str, Any]], spec: StoreSpec,
            studio: str) -> dict[str, Any]:
    """Run one action where this process is; returns its manifest as JSON.

    Raises ActionFailed (with the backend's retryability) when the stage fails.
    """
    act = Action.from_json(action)
    bound = log.bind(action=act.key[:12], label=act.label, stage=act.stage, **act.context)
    store = ArtifactStore(open_objects(spec), studio)
    existing = store.get_manifest(act.key)
    if existing is not None:
        return existing.model_dump(mode="json")
    backend = backends.load(act.stage, act.backend)
    if backend.version != act.version:
        raise ActionFailed(act.key, act.label, f"backend {act.backend} is version {backend.version} here, "
                           f"the plan wants {act.version}: deploy the same code everywhere", retryable=False)
    with tempfile.TemporaryDirectory(prefix="farm-") as tmp:
        in_dir, out_dir = Path(tmp, "in"), Path(tmp, "out")
        in_dir.mkdir()
        out_dir.mkdir()
        local: dict[str, Path] = {}
        for i, (name, blob_json) in enumerate(sorted(inputs.items())):
            blob = Blob.model_validate(blob_json)
            suffix = Path(blob.name).suffix if Path(blob.name).suffix.isascii() else ""
            local[name] = store.get_blob(blob, in_dir / f"{i:04d}{suffix}")
        bound.info("action.started")
        started = time.time()
        try:
            result = backend.run(act.op, local, act.params, out_dir)
        except StageError as exc:
            bound.warning("action.failed", error=str(exc), retryable=exc.retryable)
            raise ActionFailed(act.key, act.label, str(exc), retryable=exc.retryable) from None
        except Exception as exc:  # a bug in the backend: running it again will not help
            bound.exception("action.crashed")
            raise ActionFailed(act.key, act.label, f"{act.backend} crashed: {type(exc).__name__}: {exc}",
                               retryable=False) from None
        finished = time.time()
        outputs = {name: store.put_blob(path, name=Path(path).name) for name, path in result.files.items()}
    manifest = Manifest(
        key=act.key, stage=act.stage, op=act.op, backend=act.backend, version=act.version, label=act.label,
        outputs=outputs, meta=result.meta, usage=UsageRecord(**vars(result.usage)),
        started_at=started, finished_at=finished,
        worker={"node": socket.gethostname(), "pid": str(os.getpid())},
    )
    store.put_manifest(manifest)
    bound.info("action.finished", seconds=round(finished - started, 3))
    return manifest.model_dump(mode="json")


@ray.remote(max_retries=2)  # system failures (a worker or node died); stage failures are retried by the caller
def _execute_task(action, inputs, spec, studio, log_level):
    logs.configure(level=log_level, json=True)
    return execute(action, inputs, spec, studio)


@dataclass
class Finished:
    action: Action
    manifest: Manifest | None
    error: ActionFailed | None


class RayRuntime:
    """Submits actions as Ray tasks with the resources their backends declare.

    Connects to ``address`` (or FARM_RAY_ADDRESS through settings) when given, else starts a local Ray.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None, log_level: str = "WARNING"):
        self.log_level = log_level
        self._owns = not ray.is_initialized()
        if self._owns:
            kwargs: dict[str, Any] = {"address": address, "logging_level": "WARNING",
                                      "include_dashboard": False, "log_to_driver": True}
            if address is None and num_cpus is not None:
                kwargs["num_cpus"] = num_cpus
            ray.init(**kwargs)
        self._running: dict[ray.ObjectRef, Action] = {}

    def submit(self, action: Action, inputs: Mapping[str, Blob], spec: StoreSpec, studio: str) -> None:
        res = backends.load(action.stage, action.backend).resources
        options: dict[str, Any] = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus, "name": action.label}
        if res.accelerator:
            options["accelerator_type"] = res.accelerator
        if res.memory_mb:
            options["memory"] = res.memory_mb * 1024 * 1024
        ref = _execute_task.options(**options).remote(
            action.to_json(), {k: b.model_dump() for k, b in inputs.items()}, spec, studio, self.log_level)
        self._running[ref] = action

    @property
    def running(self) -> int:
        return len(self._running)

    def wait(self, timeout: float | None = None) -> list[Finished]:
        """Block until at least one submitted action finishes (or ``timeout``); return those that did."""
        if not self._running:
            return []
        ready, _ = ray.wait(list(self._running), num_returns=1, timeout=timeout)
        if ready:  # collect everything else already finished too
            more, _ = ray.wait([r for r in self._running if r not in ready],
                               num_returns=len(self._running) - len(ready), timeout=0)
            ready += more
        out = []
        for ref in ready:
            action = self._running.pop(ref)
            try:
                out.append(Finished(action, Manifest.model_validate(ray.get(ref)), None))
            except ActionFailed as exc:
                out.append(Finished(action, None, exc))
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if isinstance(exc.cause, Exception) else exc
                retryable = getattr(cause, "retryable", False) if isinstance(cause, FarmError) else True
                out.append(Finished(action, None, ActionFailed(action.key, action.label, str(cause), retryable=retryable)))
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.RayError) as exc:
                out.append(Finished(action, None, ActionFailed(action.key, action.label, str(exc), retryable=True)))
        return out

    def shutdown(self) -> None:
        for ref in self._running:
            ray.cancel(ref)
        self._running.clear()
        if self._owns and ray.is_initialized():
            ray.shutdown()
