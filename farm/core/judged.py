"""The judged part of an episode's plan: takes of keyframes, clips and lines, and their judges (pure).

``Judged`` wraps the planner's builder: ``take(first, op, expect, extra)`` plans take 1 (``first``,
already planned) and, as verdicts arrive, the next takes and every take's judges, and says which
take is used (farm.core.takes.chain). A judge action reads the judged output as its input
``subject`` (and the character sheets, or the subtitles), with params ``target`` (the judged op,
stage, backend and take), ``thresholds`` (the spec's overrides) and ``expect`` (what the output
should be): its key is therefore the judged action's key, the judge's version and its thresholds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from farm.core.actions import Action, BackendChoice, Ref, _Builder, canonical
from farm.core.takes import Facts, Judging, Takes, chain


class Judged:
    def __init__(self, b: _Builder, judging: Judging | None, facts: Facts, memo: dict[tuple[Any, ...], Action]):
        self.b, self.judging, self.facts, self.memo = b, judging, facts, memo
        self.takes: list[Takes] = []

    def _made(self, memo_key: tuple[Any, ...], build: Any) -> Action:
        found = self.memo.get(memo_key)
        if found is None:
            found = self.memo[memo_key] = build()
        return found

    def retake(self, first: Action, number: int) -> Action:
        """Take ``number`` of ``first`` (take 1): the same action with ``take`` (and its seed) changed."""
        if number == 1:
            return first

        def build() -> Action:
            params = dict(first.params, take=number)
            if isinstance(params.get("seed"), list):  # a keyframe's seed: [episode seed, shot]
                params["seed"] = [*params["seed"], number]
            backend = BackendChoice(first.backend, first.version, self.b.job.backends[first.stage].features)
            label = f"{first.label} take {number}"
            return self.b.make(first.stage, first.op, params, dict(first.inputs), label, backend)

        return self._made(("take", first.key, number), build)

    def judges_of(
        self, subject: Action, op: str, output: str, expect: Mapping[str, Any], extra: Mapping[str, Ref]
    ) -> list[Action]:
        """The judge actions of ``subject`` (an output of a judged op), in the order the spec names them."""
        out = []
        for judge in self.judging.judges.get(op, ()) if self.judging else ():

            def build(judge: Any = judge) -> Action:
                params = {
                    "target": {
                        "op": op,
                        "stage": subject.stage,
                        "backend": subject.backend,
                        "take": int(subject.params.get("take", 1)),
                    },
                    "thresholds": dict(judge.thresholds),
                    "expect": dict(expect),
                }
                inputs = {"subject": Ref(subject.key, output), **extra}
                label = f"judge {judge.name} {subject.label}"
                return self.b.make("judge", "judge", params, inputs, label, BackendChoice(judge.name, judge.version))

            # what it expects is in its key: one planned before a fact it reads (a keyframe's faces) is planned again
            out.append(self._made(("judge", judge, subject.key, canonical(expect)), build))
        return out

    def take(
        self, first: Action, op: str, output: str, expect: Mapping[str, Any], extra: Mapping[str, Ref], shot: str | None
    ) -> Takes:
        """Plan ``first``'s takes and judges as far as the facts go; return them (``chosen``: the take used)."""
        made: dict[str, Action] = {}

        def make(number: int) -> Action:
            action = self.retake(first, number)
            made[action.key] = action
            return action

        def judges(action: Any) -> list[Action]:
            found = self.judges_of(action, op, output, expect, extra)
            made.update((j.key, j) for j in found)
            return found

        limit = self.judging.takes if self.judging else 1
        takes = chain(make, judges, limit=limit, facts=self.facts, label=first.label, op=op, shot=shot)
        for take in takes.takes:
            if take.number > 1:
                self.b.actions.append(made[take.key])
            self.b.actions += [made[k] for k in take.judges]
        if self.judging and self.judging.judges.get(op):
            self.takes.append(takes)
        return takes
