"""The engine's ports: everything outside the pure core that the engine (farm.core.engine) talks to.

Each port is a small protocol, and each ships with a real implementation that is not a mock
(as httpx ships ``MockTransport``):

    port        real in-process implementation (here)      the others
    Journal     MemoryJournal: events in a list            farm.store.journal.StoreJournal (segments in the store)
    Clock       ManualClock: time moves when told          farm.runtime.clock.SystemClock
    Runtime     (farm.simulate's SimRuntime, pure)         farm.runtime: InProcessRuntime (threads), RayRuntime
    Artifacts   (farm.simulate's SimArtifacts, pure)       farm.service.artifacts.StoreArtifacts
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from farm.core.events import Event
from farm.core.manifest import Blob, Manifest
from farm.core.plan import Action, EpisodeJob
from farm.core.state import Profile
from farm.errors import ActionFailed
from farm.policy.residency import Placement
from farm.policy.types import Capacity


@dataclass
class Finished:
    """One action's attempt came back: its manifest, or why it failed."""

    action: Action
    manifest: Manifest | None
    error: ActionFailed | None


class Runtime(Protocol):
    """Where actions run. ``submit`` starts one with the resources of its ``profile``; ``wait`` hands
    back the attempts that finished. ``capacity`` is what may still start now; a runtime that
    ``grows`` (an autoscaler) is told what the queue needs after each decision."""

    grows: bool

    @property
    def running(self) -> int: ...

    def submit(
        self,
        action: Action,
        inputs: Mapping[str, Blob],
        profile: Profile,
        batch: str | None,
        placement: Placement | None = None,
    ) -> None:
        """Start ``action``; ``placement`` (a GPU action, where the runtime reports ``slots()``): the GPU
        it runs on, the models to unload there first and whether its own is loaded first."""
        ...

    def wait(self, timeout: float | None) -> list[Finished]:
        """Block until at least one submitted action finishes, or ``timeout`` seconds (None: until one
        does); return every one that has. Returns at once, empty, when nothing runs."""
        ...

    def capacity(self) -> Capacity: ...

    def request_capacity(self, shapes: Sequence[tuple[float, float, str | None]]) -> None:
        """What the queue needs, as (cpus, gpus, accelerator): for an autoscaler, where there is one."""
        ...

    def cancel(self, keys: Collection[str]) -> None: ...

    def adopt(self, actions: Sequence[Action]) -> set[str]:
        """After a controller restart: re-attach to those of ``actions`` (running when the last
        incarnation stopped, no manifest yet) that a worker which outlived it still runs or has
        finished; they come back through ``wait``. Returns their keys (the rest were interrupted).
        A runtime whose workers die with the controller returns an empty set."""
        ...

    def shutdown(self) -> None:
        """Stop what still runs and let go of the workers."""
        ...


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (or since a simulation's start)."""
        ...


class Journal(Protocol):
    def append(self, proposals: Sequence[Event], now: float) -> list[Event]:
        """Write ``proposals`` as one group, numbered after everything written before; return them."""
        ...

    def replay(self) -> Iterator[Any]:
        """Every event written, in order (an unreadable one as ``events.Unreadable``)."""
        ...

    def step_ended(self) -> None:
        """The engine's step ended: a journal that groups its writes may write what waits."""
        ...


class Artifacts(Protocol):
    """The engine's view of the artifact store."""

    def lookup(self, actions: Sequence[Action]) -> list[tuple[Action, Manifest]]:
        """Those of ``actions`` already done (their manifest exists), with their manifests."""
        ...

    def facts(self, action: Action, manifest: Manifest) -> dict[str, Any]:
        """What a finished action's outputs tell the planner, unchecked (a script action's script, as JSON)."""
        ...

    def deliver(self, job: EpisodeJob, outputs: Mapping[str, Blob]) -> dict[str, str]:
        """Put a finished episode's files where people read them; deliverable name -> where it is."""
        ...

    def refresh(self, studio: str) -> None:
        """Forget what is known to be done for ``studio`` (a new batch looks afresh)."""
        ...


class ManualClock:
    """A clock that moves only when told: the simulator's, and the tests'."""

    def __init__(self, start: float = 0.0):
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def set(self, when: float) -> None:
        if when < self._now:
            raise ValueError(f"time does not go back: {when} < {self._now}")
        self._now = float(when)

    def advance(self, seconds: float) -> None:
        self.set(self._now + seconds)


class MemoryJournal:
    """A journal kept in memory: the simulator's, and a controller that needs no durable memory."""

    def __init__(self, events: Sequence[Event] = ()):
        self.events: list[Event] = list(events)

    def append(self, proposals: Sequence[Event], now: float) -> list[Event]:
        start = len(self.events)
        out = [p.model_copy(update={"seq": start + i, "at": now}) for i, p in enumerate(proposals)]
        self.events += out
        return out

    def replay(self) -> Iterator[Event]:
        return iter(list(self.events))

    def step_ended(self) -> None:
        pass  # written at once
