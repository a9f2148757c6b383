"""The body of every action, wherever it runs (a Ray task, a GPU worker actor, a thread).

Fetch the input blobs, run the backend in a scratch folder, store the output blobs, then the
manifest, in that order (DESIGN.md, invariant 2). Idempotent: an action whose manifest already
exists is not run again. Knows nothing of Ray: the caller says where it runs (``where``).

The scratch folder lies under this process's scratch root (``workers.scratch``): removed when the
action ends, and swept by the next worker on the machine if this one is killed. A disk that refuses
a write (the store's or the scratch's: full, read-only) fails the action for good with one line
that says where and the fix (``farm.errors.StoreUnwritable``): running the stage again would only
fail at the same write.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import structlog

from farm.catalog import Catalog
from farm.core.manifest import Blob, Manifest
from farm.core.plan import JUDGE, Action
from farm.errors import ActionFailed, FarmError, StoreError, StoreUnwritable
from farm.observe import logs
from farm.runtime.batching import Batcher
from farm.settings import StoreSpec
from farm.store import ArtifactStore, models, open_objects
from farm.store.base import refused_write
from workers import scratch
from workers.api import BatchItem, StageError, StageResult, Usage, children_cpu

log = structlog.get_logger("farm.runtime")


def this_process() -> dict[str, str]:
    """Where an action runs when no cluster says more: this host and process."""
    host = socket.gethostname()
    return {"node": host, "host": host, "pid": str(os.getpid())}


def _cpu_now() -> float:
    """CPU-seconds of this thread so far plus those of this process's finished child programs."""
    return time.thread_time() + children_cpu()


def _charge_cpu(result: Any, measured: float) -> None:
    """Charge an action at least the CPU its backend call was measured to use here: this thread's
    in-process work (Pillow, the outline writer, any backend that reports none) and the programs it
    ran. A backend that measures itself (ffmpeg's children, torch's whole process) and reported more
    keeps its figure: the larger of the two, never their sum, so nothing is counted twice. (Threads
    of one process that run actions side by side share the children's count, as backends that
    measure children themselves already do.)"""
    usage = getattr(result, "usage", None)
    if not isinstance(usage, Usage):
        return  # not a StageResult, or usage the manifest refuses: said below
    reported = usage.cpu_seconds
    if not (isinstance(reported, (int, float)) and math.isfinite(reported) and reported >= measured):
        result.usage = dataclasses.replace(usage, cpu_seconds=round(max(measured, 0.0), 6))


def execute(
    action: Mapping[str, Any],
    inputs: Mapping[str, Mapping[str, Any]],
    spec: StoreSpec,
    studio: str,
    batch: str | None = None,
    configs: Mapping[str, Any] | None = None,
    batcher: Batcher | None = None,
    where: Callable[[], dict[str, str]] = this_process,
) -> dict[str, Any]:
    """Run one action where this process is; returns its manifest as JSON.

    ``batch`` is the batch charged for it: every log line of the action carries it with the
    episode, stage and action key. ``configs`` are the configured backends (settings' ``backends``);
    ``batcher`` (a GPU worker's) lets the action share a backend call with others; ``where``
    describes the worker (node, host, pid, GPUs) for the manifest and for failures.

    Raises ActionFailed (with the backend's retryability) when the stage fails; a backend that
    crashes (a bug) fails for good, and its traceback is kept as the error's cause and in the log.
    """
    act = Action.from_json(action)
    logs.hide(spec.access_key.get_secret_value(), spec.secret_key.get_secret_value(), *Catalog(configs).secrets())
    bound = log.bind(**logs.action_context(act, batch))
    store = ArtifactStore(open_objects(spec), studio)
    existing = store.get_manifest(act.key)
    if existing is not None:
        return existing.model_dump(mode="json")
    node = where().get("node")
    try:
        backend = Catalog(models.localize(configs, store.objects)).load(act.stage, act.backend)
    except (ValueError, ImportError, FarmError) as exc:  # settings differ from the planner's, a package
        #                                                  is missing, a stored model cannot be fetched
        raise ActionFailed(
            act.key, act.label, f"cannot load backend {act.backend}: {exc}", retryable=False, worker=node
        ) from exc
    if backend.version != act.version:
        raise ActionFailed(
            act.key,
            act.label,
            f"backend {act.backend} is version {backend.version} here, "
            f"the plan wants {act.version}: deploy the same code and settings everywhere",
            retryable=False,
        )
    try:
        manifest = _run(act, inputs, store, backend, batcher, where, bound)
        _patiently(lambda: store.put_manifest(manifest), bound)
    except (StoreUnwritable, OSError) as exc:  # OSError: making or clearing the scratch folder
        refused = exc if isinstance(exc, StoreUnwritable) else refused_write(exc, "scratch", scratch.base(), "TMPDIR")
        if refused is None:
            raise
        bound.warning("action.failed", error=str(refused), retryable=False)
        raise ActionFailed(act.key, act.label, str(refused), retryable=False, worker=node) from exc
    bound.info("action.finished", seconds=round(manifest.finished_at - manifest.started_at, 3))
    return manifest.model_dump(mode="json")


T = TypeVar("T")

# How long a worker whose stage has run keeps trying to publish its result while the store is
# unavailable. The work is done (GPU time spent, a provider paid): failing now would pay for it again.
PUBLISH_PATIENCE_S = 900.0


def _patiently(publish: Callable[[], T], bound: Any, patience_s: float | None = None) -> T:
    """Run ``publish`` (writes of a finished action's outputs), trying again with backoff (1 s doubling
    to 15 s) for up to ``patience_s`` while the store answers with a retryable error (S3 down). A
    store that refuses for good (full, read-only, a denied write) is raised at once."""
    patience = PUBLISH_PATIENCE_S if patience_s is None else patience_s
    deadline, wait, tries = time.monotonic() + patience, 1.0, 0
    while True:
        try:
            return publish()
        except StoreError as exc:
            tries += 1
            if not exc.retryable or time.monotonic() + wait > deadline:
                raise
            if tries == 1:
                bound.warning("action.publish_waits", error=str(exc)[:300])
            time.sleep(wait)
            wait = min(15.0, wait * 2)


def _run(
    act: Action,
    inputs: Mapping[str, Mapping[str, Any]],
    store: ArtifactStore,
    backend: Any,
    batcher: Batcher | None,
    where: Callable[[], dict[str, str]],
    bound: Any,
) -> Manifest:
    """Fetch the inputs, run the backend and store its outputs, in a scratch folder; the manifest to record."""
    node = where().get("node")
    with scratch.scratch_dir("farm-") as tmp:
        # one scratch folder: inputs are named "in-NNNN.ext" by the farm, outputs by the backend
        out_dir = Path(tmp)
        local: dict[str, Path] = {}
        for i, (name, blob_json) in enumerate(sorted(inputs.items())):
            blob = Blob.model_validate(blob_json)
            suffix = Path(blob.name).suffix if Path(blob.name).suffix.isascii() else ""
            local[name] = store.get_blob(blob, out_dir / f"in-{i:04d}{suffix}")
        bound.info("action.started")
        started = time.time()
        cpu0 = _cpu_now()
        try:
            if batcher is not None:
                result = batcher.run(act.op, BatchItem(local, act.params, out_dir))
            elif getattr(backend, "resumable", False):
                result = backend.run(act.op, local, act.params, out_dir, job=store.job_record(act.key))
            else:
                result = backend.run(act.op, local, act.params, out_dir)
        except StageError as exc:
            bound.warning("action.failed", error=str(exc), retryable=exc.retryable)
            raise ActionFailed(
                act.key, act.label, str(exc), retryable=exc.retryable, worker=node, retry_after=exc.retry_after
            ) from exc
        except OSError as exc:  # a full or read-only scratch disk is not a bug in the backend
            refused = refused_write(exc, f"{act.backend}'s files", out_dir, "TMPDIR")
            if refused is None:
                bound.exception("action.crashed")
                raise ActionFailed(
                    act.key,
                    act.label,
                    f"{act.backend} crashed: {type(exc).__name__}: {exc}",
                    retryable=False,
                    worker=node,
                ) from exc
            raise refused from exc
        except Exception as exc:  # a bug in the backend: running it again will not help
            bound.exception("action.crashed")
            # ... except a judge's: a crash says nothing of the take, which is judged again (and never passed)
            raise ActionFailed(
                act.key,
                act.label,
                f"{act.backend} crashed: {type(exc).__name__}: {exc}",
                retryable=act.stage == JUDGE,
                worker=node,
            ) from exc
        finished = time.time()
        if not isinstance(result, StageResult):
            raise ActionFailed(
                act.key,
                act.label,
                f"{act.backend} returned {type(result).__name__}, not a StageResult",
                retryable=False,
                worker=node,
            )
        if batcher is None:  # a batched call's CPU is shared by its actions: its backend divides it
            _charge_cpu(result, _cpu_now() - cpu0)
        missing = sorted(n for n, path in result.files.items() if not Path(path).is_file())
        if missing:
            raise ActionFailed(
                act.key,
                act.label,
                f"{act.backend} did not write its {', '.join(missing)} output",
                retryable=False,
                worker=node,
            )
        outputs = _patiently(
            lambda: {name: store.put_blob(Path(path), name=Path(path).name) for name, path in result.files.items()},
            bound,
        )
        try:
            manifest = Manifest(
                key=act.key,
                stage=act.stage,
                op=act.op,
                backend=act.backend,
                version=act.version,
                label=act.label,
                outputs=outputs,
                meta=result.meta,
                usage=result.usage,
                started_at=started,
                finished_at=finished,
                worker=where(),
            )
        except (TypeError, ValueError) as exc:  # meta or usage the manifest cannot hold
            raise ActionFailed(
                act.key,
                act.label,
                f"{act.backend} returned a result the farm cannot record: {type(exc).__name__}: {exc}",
                retryable=False,
                worker=node,
            ) from exc
    return manifest
