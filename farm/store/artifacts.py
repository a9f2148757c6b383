"""ArtifactStore: blobs by SHA-256, one manifest per finished action, readable deliverables.

Layout inside the object store, one tree per studio (tenants are apart, DESIGN.md invariant 7)::

    <studio>/blobs/sha256/ab/abcdef…          content-addressed files
    <studio>/actions/12/1234…json             manifests: an action is done iff its manifest exists
    <studio>/episodes/<series>/<ep>/<file>    the deliverables, under a path people can read
    <studio>/jobs/12/1234…json                a resumable backend's provider job (ComfyUI prompt id)

Blobs are written before the manifest that names them (invariant 2), so a crash leaves at worst an
orphan blob, never a manifest that points at nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from farm.core.manifest import Blob, Manifest
from farm.errors import StoreError
from farm.store.base import ObjectStore, check_name

M = TypeVar("M", bound=Manifest)


def file_digest(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class ArtifactStore:
    def __init__(self, objects: ObjectStore, studio: str):
        self.objects = objects
        self.studio = check_name(studio)

    def _blob_name(self, digest: str) -> str:
        return f"{self.studio}/blobs/sha256/{digest[:2]}/{digest}"

    def _manifest_name(self, key: str) -> str:
        return f"{self.studio}/actions/{key[:2]}/{key}.json"

    def put_blob(self, path: Path, name: str | None = None) -> Blob:
        """Store a file by its digest (once: an existing blob is not uploaded again)."""
        digest, size = file_digest(path)
        target = self._blob_name(digest)
        if not self.objects.exists(target):
            self.objects.put_file(target, path)
        return Blob(digest=digest, size=size, name=name or Path(path).name)

    def get_blob(self, blob: Blob, dest: Path) -> Path:
        self.objects.get_file(self._blob_name(blob.digest), dest)
        digest, _ = file_digest(dest)
        if digest != blob.digest:
            raise StoreError(f"blob {blob.digest} is corrupt in {self.objects.describe()} (read {digest})")
        return dest

    def has_blob(self, digest: str) -> bool:
        return self.objects.exists(self._blob_name(digest))

    def put_manifest(self, manifest: Manifest) -> None:
        """Record an action as done. Its blobs must already be stored."""
        missing = [n for n, b in manifest.outputs.items() if not self.has_blob(b.digest)]
        if missing:
            raise StoreError(f"manifest {manifest.key} names outputs not in the store: {', '.join(missing)}")
        self.objects.put_bytes(self._manifest_name(manifest.key), manifest.model_dump_json().encode())

    def get_manifest(self, key: str, model: type[M] = Manifest) -> M | None:  # type: ignore[assignment]
        """The manifest of action ``key``, or None; read as ``model`` (a Manifest, or a subclass of it
        such as the engine's ActionResult, so that it need not be copied into one)."""
        data = self.objects.get_bytes(self._manifest_name(key))
        if data is None:
            return None
        try:
            return model.model_validate_json(data)
        except ValidationError as exc:
            raise StoreError(f"manifest {key} in {self.objects.describe()} is unreadable: {exc}") from exc

    def job_record(self, key: str) -> JobRecord:
        """Where a resumable backend keeps its provider job for action ``key`` (a ComfyUI prompt id)."""
        return JobRecord(self.objects, f"{self.studio}/jobs/{key[:2]}/{key}.json")

    def done_keys(self) -> set[str]:
        """Keys of every finished action, in one listing (decide "done" in bulk, not per action)."""
        names = self.objects.list(f"{self.studio}/actions/")
        return {n.rsplit("/", 1)[-1][:-5] for n in names if n.endswith(".json")}

    def deliverable_name(self, series: str, episode: str, filename: str) -> str:
        return check_name(f"{self.studio}/episodes/{series}/{episode}/{filename}")

    def publish(self, blob: Blob, series: str, episode: str, filename: str) -> str:
        """Copy a blob to the episode's readable path; returns the object name."""
        name = self.deliverable_name(series, episode, filename)
        self.objects.copy(self._blob_name(blob.digest), name)
        return name


class JobRecord:
    """One action's job at a provider, durably in the store (``workers.api.JobRecord``): saved
    before the backend waits on the job, so an action run again after a crash resumes waiting on
    the job instead of submitting (and paying for) it twice. Kept after the action finishes, as
    the record of which provider job made its outputs."""

    def __init__(self, objects: ObjectStore, name: str):
        self.objects, self.name = objects, check_name(name)

    def load(self) -> dict | None:
        data = self.objects.get_bytes(self.name)
        return None if data is None else json.loads(data)

    def save(self, state) -> None:
        self.objects.put_bytes(self.name, json.dumps(dict(state), sort_keys=True).encode(), durable=True)
