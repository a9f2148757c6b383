"""The engine's Artifacts port on the artifact store: what is done, what a result says, where episodes go.

"Done" is decided in bulk: each studio's manifests are listed once (and again for each new batch
of that studio), and a lookup reads only the manifests of keys in that listing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from farm.core.events import ActionResult
from farm.core.manifest import Blob, Manifest
from farm.core.plan import DELIVERABLES, Action, EpisodeJob
from farm.store import ArtifactStore, ObjectStore
from workers import scratch

# the largest script a script action may write that the controller will read (a few hundred shots)
MAX_SCRIPT_BYTES = 4 << 20


class StoreArtifacts:
    def __init__(self, objects: ObjectStore):
        self.objects = objects
        self._stores: dict[str, ArtifactStore] = {}
        self._done: dict[str, set[str]] = {}

    def store(self, studio: str) -> ArtifactStore:
        if studio not in self._stores:
            self._stores[studio] = ArtifactStore(self.objects, studio)
        return self._stores[studio]

    def refresh(self, studio: str) -> None:
        self._done[studio] = self.store(studio).done_keys()

    def _done_keys(self, studio: str) -> set[str]:
        if studio not in self._done:
            self.refresh(studio)
        return self._done[studio]

    def lookup(self, actions: Sequence[Action]) -> list[tuple[Action, Manifest]]:
        found: list[tuple[Action, Manifest]] = []
        for action in actions:
            studio = action.context["studio"]
            if action.key in self._done_keys(studio):
                manifest = self.store(studio).get_manifest(action.key, ActionResult)
                if manifest is not None:
                    found.append((action, manifest))
        return found

    def facts(self, action: Action, manifest: Manifest) -> dict[str, Any]:
        """A script action's script, as JSON (the controller checks it); nothing for other actions.
        A script that is too big or not JSON is handed on as text, for the controller to refuse."""
        if action.op != "script" or "script" not in manifest.outputs:
            return {}
        blob = manifest.outputs["script"]
        if blob.size > MAX_SCRIPT_BYTES:
            return {"script": f"a script of {blob.size} bytes (at most {MAX_SCRIPT_BYTES})"}
        with scratch.scratch_dir("farm-facts-") as tmp:
            path = self.store(action.context["studio"]).get_blob(blob, Path(tmp, "script.json"))
            text = path.read_text(encoding="utf-8", errors="replace")
        try:
            return {"script": json.loads(text)}
        except ValueError:
            return {"script": text[:200]}

    def deliver(self, job: EpisodeJob, outputs: Mapping[str, Blob]) -> dict[str, str]:
        """Publish an episode's deliverables under its readable path; returns output -> object name.
        No byte is written again: a hard link to each blob on a local store (a copy only where the
        episode's folder is on another file system), a server-side copy on S3."""
        store = self.store(job.studio)
        return {
            out: store.publish(outputs[out], job.series.id, job.episode.slug, name)
            for out, name in DELIVERABLES.items()
        }
