"""How long a batch still takes: the projection behind ``projected_finish``, batch status and the
render's "to go" (pure).

A batch's remaining time is the longest of its remaining critical path and, for its CPU work and its
GPU work, that work over the lanes it can use; each action takes its backend's estimate scaled by
what that backend's actions took so far. ``Decisions`` owns one ``Projection`` and keeps it told:
what finished actions took (``learn``), the room at each decision (``room``), which episodes stopped
(``forget``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from farm.core.plan import Action, plan_episode, plan_script, sketch, spoken_samples
from farm.core.state import ActionState, BatchState, EpisodeState, Profile


class Scheduler(Protocol):
    """What the projection reads of ``farm.core.decisions.Decisions`` (named here, so that module and
    this one do not import each other)."""

    batches: dict[str, BatchState]
    episodes: dict[tuple[str, str], EpisodeState]
    actions: dict[str, ActionState]
    profiles: dict[tuple[str, str], Profile]
    _estimates: dict[str, tuple[float, int, float]]
    _dependants: dict[str, list[str]]
    _running: set[str]

    def _estimate(self, action: Action) -> tuple[float, int, float]: ...

    def _guarded_estimate(self, action: Action, record: bool = True) -> tuple[float, int, float]: ...


_DEFAULT_PROFILE = Profile()
_NO_KEYS: list[str] = []  # no dependants (never added to)


class Projection:
    """What the projection learns, and the projection itself (``remaining_seconds``)."""

    def __init__(self) -> None:
        # per (stage, backend): the seconds its actions took, the seconds they were estimated to take,
        # and how many ran; each episode's expected plan (with whether its script was known); the
        # room at the last decision (free CPUs and GPUs, then all of them: free plus what runs)
        self.took: dict[tuple[str, str], tuple[float, float, int]] = {}
        self.expected: dict[tuple[str, str], tuple[bool, list[_Expected]]] = {}
        self.room: tuple[float, float, float, float] | None = None

    def learn(self, action: Action, took: float, estimated: float) -> None:
        """An action of ``action``'s backend took ``took`` seconds where ``estimated`` were expected."""
        if not math.isfinite(took) or took < 0:
            return
        seconds, estimates, count = self.took.get((action.stage, action.backend), (0.0, 0.0, 0))
        self.took[(action.stage, action.backend)] = (seconds + took, estimates + estimated, count + 1)

    def forget(self, batch_id: str, episode: str) -> None:
        """An episode stopped: its expected plan is no longer needed."""
        self.expected.pop((batch_id, episode), None)

    def remaining_seconds(self, d: Scheduler, batch_id: str, now: float) -> float:
        """How long the batch's live episodes should still take from ``now``: the longest of

        * the remaining critical path of their actions;
        * for their CPU work and for their GPU work: the work (seconds times the CPUs or GPUs an
          action holds) over the CPUs or GPUs the batch can use, after the soonest any of it can
          start (the longest path to it) and before the least that must follow it (the path after it).

        Each is a lower bound on what is left, and it is exact at the end. An action takes its
        expected seconds: its backend's estimate, scaled by how long that backend's actions took so
        far against their estimates (their mean, if every estimate was 0); a running one only what
        is left of that since it was dispatched (never below 0), one waiting out a retry its wait
        too; an action shared by episodes counts once; the actions not planned yet (an outline's
        shots before the script is written, a shot's clip before its lines are voiced) count as the
        episode's expected plan (``_expected_plan``) has them. The CPUs (GPUs) the batch can use:
        what its running actions hold plus what was free at the last decision; when that is none,
        all those seen then; else one. 0 when nothing is left. O(actions of the batch)."""
        batch = d.batches[batch_id]
        # node (an action's key, or "~<episode>/<label>" for one not planned yet) -> its seconds on a
        # path (with any retry wait). Nodes are added inputs first (as a plan lists its actions),
        # the order the longest paths are worked out in below.
        path: dict[str, float] = {}
        spans: dict[str, tuple[int, float]] = {}  # node -> (1 on a GPU else 0, its seconds of work)
        extra: dict[str, list[str]] = {}  # node -> the nodes not planned yet that wait for it
        kinds: dict[tuple[str, str], tuple[int, float, float, float]] = {}

        def kind(stage: str, backend: str) -> tuple[int, float, float, float]:
            """(1 on a GPU else 0, CPUs or GPUs held, scale of an estimate, seconds when estimates are 0)."""
            profile = d.profiles.get((stage, backend)) or _DEFAULT_PROFILE
            took, estimated, count = self.took.get((stage, backend), (0.0, 0.0, 0))
            k = kinds[(stage, backend)] = (
                1 if profile.gpus > 0 else 0,
                profile.gpus if profile.gpus > 0 else profile.cpus,
                took / estimated if estimated > 0 else (1.0 if count == 0 else 0.0),
                took / count if count and estimated <= 0 else 0.0,
            )
            return k

        def add(node: str, stage: str, backend: str, seconds: float, state: Any) -> None:
            gpu, units, scale, mean = kinds.get((stage, backend)) or kind(stage, backend)
            seconds = seconds * scale + mean
            wait = 0.0
            if state is not None:
                if state.status == "running":
                    since = state.started_at if state.started_at is not None else now
                    seconds = max(0.0, seconds - (now - since))
                elif state.not_before > now:
                    wait = state.not_before - now
            path[node], spans[node] = seconds + wait, (gpu, seconds * units)

        def add_action(key: str) -> None:
            state = actions[key]
            a = state.action
            add(key, a.stage, a.backend, (estimates.get(key) or d._estimate(a))[0], state)

        actions, closed, estimates = d.actions, ("done", "quarantined"), d._estimates
        for eid in batch.episodes:
            ep = d.episodes[(batch_id, eid)]
            if ep.status != "running":
                continue
            if ep.final_key is None:  # not planned to the end yet: follow its expected plan
                real = {actions[k].action.label: k for k in ep.keys}
                for x in self._expected_plan(d, ep):  # inputs first, as a plan lists them
                    key = real.get(x.label)
                    if key is None:  # not planned yet (a key is hex)
                        node = f"~{eid}/{x.label}"
                        for i in x.inputs + x.planned_by:
                            extra.setdefault(real.get(i) or f"~{eid}/{i}", []).append(node)
                        add(node, x.stage, x.backend, x.seconds, None)
                    elif key not in path and actions[key].status not in closed:
                        add_action(key)
            for key in ep.keys:  # (the rest, if its expected plan missed any)
                if key not in path and actions[key].status not in closed:
                    add_action(key)
        if not path:
            return 0.0
        # the soonest each node can start (inputs first), then the longest path from its start
        # (dependants first): along the plan's edges, and to the nodes not planned yet
        dependants, none = d._dependants, _NO_KEYS
        children = {node: [*dependants.get(node, none), *kids] for node, kids in extra.items()}
        start = dict.fromkeys(path, 0.0)
        for node, seconds in path.items():
            done_at = start[node] + seconds
            for kid in children.get(node) or dependants.get(node, none):
                if kid in start and start[kid] < done_at:
                    start[kid] = done_at
        through: dict[str, float] = {}
        work, first, least = [0.0, 0.0], [math.inf, math.inf], [math.inf, math.inf]
        for node in reversed(path):
            rest = 0.0
            for kid in children.get(node) or dependants.get(node, none):
                t = through.get(kid)
                if t is not None and t > rest:
                    rest = t
            through[node] = path[node] + rest
            gpu, span = spans[node]
            work[gpu] += span
            first[gpu] = min(first[gpu], start[node])
            least[gpu] = min(least[gpu], rest)
        bounds = [max(through.values())]
        for gpu, lanes in enumerate(self._lanes(d, batch_id)):
            if work[gpu] > 0:
                bounds.append(first[gpu] + work[gpu] / lanes + least[gpu])
        return max(bounds)

    def _lanes(self, d: Scheduler, batch_id: str) -> tuple[float, float]:
        """The CPUs and GPUs a batch can use now (see ``remaining_seconds``)."""
        held = [0.0, 0.0]
        for key in d._running:
            state = d.actions[key]
            if any(b == batch_id and d.episodes[(b, ep)].status == "running" for b, ep in state.episodes):
                profile = d.profiles.get((state.action.stage, state.action.backend), _DEFAULT_PROFILE)
                if profile.gpus > 0:
                    held[1] += profile.gpus
                else:
                    held[0] += profile.cpus
        free_cpus, free_gpus, all_cpus, all_gpus = self.room or (0.0, 0.0, 0.0, 0.0)
        return (held[0] + free_cpus or all_cpus or 1.0), (held[1] + free_gpus or all_gpus or 1.0)

    def _expected_plan(self, d: Scheduler, ep: EpisodeState) -> list[_Expected]:
        """The actions an episode is expected to have in the end, named by label: planned (without keys)
        from its script, or its outline's sketch before the script is written, with every line's
        length from its text. Kept until its script becomes known."""
        script = ep.script or ep.job.episode.script
        kept = self.expected.get((ep.batch, ep.id))
        if kept is not None and kept[0] == (script is not None):
            return kept[1]
        try:
            if script is None:
                script, samples, fixed = sketch(ep.job, None, keyed=False)
            else:
                fixed = plan_script(ep.job, script, keyed=False)
                samples = {
                    a.key: spoken_samples(str(a.params["text"]), ep.job.series) for a in fixed.actions if a.op == "line"
                }
            actions = plan_episode(ep.job, script, samples, fixed, keyed=False).actions
        except Exception:  # an episode that cannot even be sketched is projected by what is planned
            actions = []
        labels = {a.key: a.label for a in actions}
        # what plans an action, beyond what it reads: the script plans the rest of the episode, and a
        # shot's lines (their lengths) its clip
        script_label = next((a.label for a in actions if a.op == "script"), None)
        voiced: dict[str, tuple[str, ...]] = {}
        for a in actions:
            if a.op == "mux" and "clip" in a.inputs:
                lines = tuple(labels[r.key] for n, r in a.inputs.items() if n.startswith("line") and r.key in labels)
                voiced[labels.get(a.inputs["clip"].key, "")] = lines
        plan = [
            _Expected(
                a.label,
                a.stage,
                a.backend,
                d._guarded_estimate(a, record=False)[0],
                tuple(labels[r.key] for r in a.inputs.values() if r.key in labels),
                (() if script_label is None or a.op == "script" else (script_label,)) + voiced.get(a.label, ()),
            )
            for a in actions
        ]
        self.expected[(ep.batch, ep.id)] = (script is not None, plan)
        return plan


@dataclass(frozen=True)
class _Expected:
    """One action of an episode's expected plan (``Projection._expected_plan``)."""

    label: str
    stage: str
    backend: str
    seconds: float  # its backend's estimate
    inputs: tuple[str, ...]  # the labels of the actions it reads
    planned_by: tuple[str, ...]  # and of those whose facts plan it (it waits for them until it is planned)
