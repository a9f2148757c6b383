"""How an episode's plan grows as facts arrive (pure): a script written, a line voiced, a judge's
verdict, a person's review, a take the budget declined. Each new fact plans the episode again
(farm.core.plan.plan_episode); the actions it adds are looked up in the store, the ones it drops (a
declined take, a final assembly a review replaced) are no longer its own, and an episode whose last
action (and its delivery checks) are done is delivered.
"""

from __future__ import annotations

from typing import Any

from farm.core.events import JudgingData
from farm.core.plan import JUDGE, plan_episode, plan_script
from farm.core.proposals import Proposals
from farm.core.state import ActionState, Command, Deliver, EpisodeState, Lookup
from farm.core.takes import Facts, JudgeChoice, Judging, Review, Verdict
from farm.core.talking import is_speech_clip


def judging_of(data: JudgingData | None) -> Judging | None:
    """A submitted episode's judging as the planner reads it (None: nothing is judged)."""
    if data is None:
        return None
    judges = {
        op: tuple(
            JudgeChoice(str(j[0]), str(j[1]), tuple(sorted(dict(j[2] if len(j) > 2 else {}).items()))) for j in js
        )
        for op, js in data.judges.items()
    }
    return Judging(judges=judges, takes=data.takes, strict=data.strict)


def review_of(d: Any) -> Review:
    return Review(d.key, d.shot, d.verdict == "approve", d.reason, d.at)


class Planning(Proposals):
    """The planning half of the controller: episodes planned again as facts arrive."""

    verdicts: dict[str, Verdict]  # what every judge action said, by its key (set by Controller)
    errors: list[str]

    def _progress(self, ep: EpisodeState) -> list[Command]:
        """Deliver an episode whose final action is done and whose delivery checks passed (one that
        failed them fails at the next decision, with the failing checks)."""
        if ep.status == "running" and ep.final_key is not None and self.actions[ep.final_key].status == "done":
            if (ep.batch, ep.id) in self._failing:
                return []  # held for review by a strict batch (its assembly was done before)
            if ep.final_judges and ep.delivery is None:
                return []  # its delivery checks are still to come
            if ep.delivery is not None and not ep.delivery.passed:
                failing = "; ".join(ep.delivery.failing) or "a check failed"
                self._failing[(ep.batch, ep.id)] = f"its delivery checks failed: {failing}"
                return []
            ep.status = "delivering"
            return [Deliver(ep.batch, ep.id)]
        return []

    def _replan(self, ep: EpisodeState) -> list[str]:
        """Plan ``ep`` again with what is known; return keys the controller has never seen."""
        script = ep.script or ep.job.episode.script
        if ep.fixed is None or (script is not None and not ep.fixed.shots):
            ep.fixed = plan_script(ep.job, ep.script)  # what the script fixes, planned once
        facts = Facts(self.verdicts, ep.reviews, frozenset(ep.declined))
        plan = plan_episode(ep.job, ep.script, ep.line_samples, ep.fixed, facts=facts, faces=ep.faces, spoken=ep.spoken)
        fresh = []
        for action in plan.actions:
            state = self.actions.get(action.key)
            if state is None:
                state = self.actions[action.key] = ActionState(action)
                fresh.append(action.key)
                for ref in action.inputs.values():
                    self._dependants.setdefault(ref.key, []).append(action.key)
                self._check_ready(action.key)
            elif (ep.batch, ep.id) not in state.episodes:  # shared with another episode now: it may
                self._tasks.pop(action.key, None)  # count for another batch
                self._queue.discard(action.key)
                self._changed.add(action.key)
            state.episodes.add((ep.batch, ep.id))
        kept = {a.key for a in plan.actions}
        for key in ep.keys:  # no longer this episode's (a take its budget declined, a final a review replaced)
            if key not in kept and (ep.batch, ep.id) in self.actions[key].episodes:
                self.actions[key].episodes.discard((ep.batch, ep.id))
                self._tasks.pop(key, None)
                self._queue.discard(key)
                self._changed.add(key)
                self._run_stale = True
        ep.keys = [a.key for a in plan.actions]
        ep.final_key = plan.final_key
        ep.takes, ep.final_judges, ep.delivery, ep.flagged = plan.takes, plan.final_judges, plan.delivery, plan.flagged
        judging = ep.job.judging
        # strict: held for review once every shot is settled (so a person sees every flagged shot at once),
        # before its assembly runs
        if judging is not None and judging.strict and ep.flagged and ep.final_key and ep.status == "running":
            self._failing[(ep.batch, ep.id)] = "the batch is strict and " + "; ".join(ep.flagged)
        self._graph_changed = bool(fresh) or self._graph_changed
        # facts already known for actions shared with other episodes
        learned = [k for k in ep.keys if self.actions[k].status == "done" and self._teach(ep, self.actions[k])]
        return fresh + (self._replan(ep) if learned else [])

    def _check_ready(self, key: str) -> None:
        state = self.actions[key]
        self._changed.add(key)
        if state.status == "pending" and all(
            self.actions[r.key].status == "done" for r in state.action.inputs.values()
        ):
            if key not in self._ready:
                self._ready.add(key)
                self._ready_count += 1
                self._ready_since[key] = self._ready_count
        else:
            self._ready.discard(key)

    def _set_status(self, key: str, status: str) -> None:
        state = self.actions[key]
        if status == "running" and key not in self._running:
            self._running.add(key)
            if not self._run_stale and self._wanted(state):
                self._hold(self._task(state), 1)
        elif status != "running" and key in self._running:
            self._running.discard(key)
            if not self._run_stale and key in self._run:
                self._hold(self._run[key], -1)
        state.status = status
        self._check_ready(key)
        if status == "done":
            for dependant in self._dependants.get(key, ()):
                self._check_ready(dependant)

    def _teach(self, ep: EpisodeState, state: ActionState) -> bool:
        """Give ``ep`` the facts a finished action carries; True if they are new to it."""
        action, result = state.action, state.manifest
        if result is None:
            return False
        if action.op == JUDGE:
            if action.key not in self.verdicts:
                self.verdicts[action.key] = Verdict.of(result.meta)
            if action.key in ep.judged:
                return False
            ep.judged.add(action.key)
            return True
        if action.op == "keyframe" and action.key not in ep.faces:
            faces = result.meta.get("faces")
            ep.faces[action.key] = dict(faces) if isinstance(faces, dict) else {}
            return "lipsync" in ep.job.backends
        if is_speech_clip(action) and action.key not in ep.spoken:
            ep.spoken[action.key] = [dict(t) for t in result.meta["lines"]]  # checked (farm.core.checks)
            return True
        if action.op == "line" and action.key not in ep.line_samples:
            ep.line_samples[action.key] = int(result.meta["samples"])
            return True
        if action.op == "script" and ep.script is None and ep.job.episode.script is None:
            if result.facts is None or result.facts.script is None:
                raise ValueError(f"{action.label} finished without a script")
            ep.script = result.facts.script
            return True
        return False

    def _on_review_recorded(self, e: Any) -> list[Command]:
        """A person's verdict on a take of one of the batch's episodes: planned again with it while
        the episode runs (a later submission of the episode reads it from the store)."""
        d = e.data
        ep = self.episodes.get((e.batch or "", d.episode))
        if ep is None:
            self.errors.append(f"journal event {e.seq}: a review of {d.episode}, not an episode of batch {e.batch}")
            return []
        ep.reviews[d.key] = review_of(d)
        return self._replanned(ep)

    def _on_take_declined(self, e: Any) -> list[Command]:
        """The batch's budget would not pay for a take: its episodes use their best take so far."""
        commands: list[Command] = []
        state = self.actions.get(e.key or "")
        for b, eid in sorted(state.episodes if state else ()):
            ep = self.episodes[(b, eid)]
            if b == e.batch:
                ep.declined.add(e.key)
                commands += self._replanned(ep)
        return commands

    def _replanned(self, ep: EpisodeState) -> list[Command]:
        if ep.status != "running":
            return []
        self._reorder()
        fresh = self._replan(ep)
        return ([Lookup(tuple(fresh))] if fresh else []) + self._progress(ep)
