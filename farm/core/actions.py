"""What the planner makes: actions, the refs between them, their keys, and the builder that keys them.

An action's key is the SHA-256 of the canonical JSON of what it depends on (DESIGN.md, invariant 1):
stage, op, backend and its version, parameters, the keys of its inputs and the studio's cache
namespace. ``farm.core.plan`` re-exports every name here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from farm.core.spec import Episode, Series
from farm.core.takes import Judging


@dataclass(frozen=True)
class Ref:
    """One named output of another action."""

    key: str
    output: str


@dataclass(frozen=True)
class BackendChoice:
    name: str
    version: str
    # what the backend can take beyond the common params: "last_frame" (a clip may end on the next
    # shot's keyframe). Derived from the backend's settings, which its version already digests.
    features: tuple[str, ...] = ()

    def to_json(self) -> list[Any]:
        return [self.name, self.version, list(self.features)]

    @classmethod
    def from_json(cls, data: Sequence[Any]) -> BackendChoice:
        return cls(data[0], data[1], tuple(data[2]) if len(data) > 2 else ())


@dataclass(frozen=True)
class Action:
    key: str
    stage: str
    op: str
    backend: str
    version: str
    params: Mapping[str, Any]
    inputs: Mapping[str, Ref]
    label: str  # for people and logs: "line s01-02#1"; not part of the key
    context: Mapping[str, str] = field(default_factory=dict)  # studio, series, episode: logs only

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "stage": self.stage,
            "op": self.op,
            "backend": self.backend,
            "version": self.version,
            "params": self.params,
            "label": self.label,
            "inputs": {k: [r.key, r.output] for k, r in self.inputs.items()},
            "context": dict(self.context),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Action:
        return cls(
            key=data["key"],
            stage=data["stage"],
            op=data["op"],
            backend=data["backend"],
            version=data["version"],
            params=data["params"],
            label=data["label"],
            inputs={k: Ref(*v) for k, v in data["inputs"].items()},
            context=data.get("context", {}),
        )


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def action_key(
    stage: str, op: str, backend: BackendChoice, params: Mapping[str, Any], inputs: Mapping[str, Ref], namespace: str
) -> str:
    body = {
        "stage": stage,
        "op": op,
        "backend": backend.name,
        "version": backend.version,
        "params": params,
        "inputs": {k: f"{r.key}:{r.output}" for k, r in inputs.items()},
        "namespace": namespace,
    }
    return hashlib.sha256(canonical(body).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class EpisodeJob:
    """Everything the planner needs to know about one episode, as values."""

    studio: str
    namespace: str
    series: Series
    episode: Episode
    backends: Mapping[str, BackendChoice]
    judging: Judging | None = None  # None: nothing is judged (a journal from before judges)


class _Builder:
    """Makes an episode's actions; ``keyed`` False (a sketch, for estimates) names each by its label
    instead of hashing what it depends on."""

    def __init__(self, job: EpisodeJob, keyed: bool = True):
        self.job, self.keyed = job, keyed
        self.actions: list[Action] = []
        self.context = {"studio": job.studio, "series": job.series.id, "episode": job.episode.slug}

    def make(
        self,
        stage: str,
        op: str,
        params: dict[str, Any],
        inputs: dict[str, Ref],
        label: str,
        backend: BackendChoice | None = None,
    ) -> Action:
        backend = backend or self.job.backends[stage]
        key = action_key(stage, op, backend, params, inputs, self.job.namespace) if self.keyed else f"~{label}"
        return Action(key, stage, op, backend.name, backend.version, params, inputs, label, self.context)

    def add(self, stage: str, op: str, params: dict[str, Any], inputs: dict[str, Ref], label: str) -> Action:
        action = self.make(stage, op, params, inputs, label)
        self.actions.append(action)
        return action
