"""In what order ready actions are considered: priority class, deadline slack, remaining critical path.

``upward_ranks`` is HEFT's upward rank: an action's own estimate plus the longest chain of estimated
work behind it. ``sort_key`` turns (task, batch terms, rank, pace) into a static tuple; the smallest
goes first::

    (-priority, deadline - rank - pace.behind, pace.due - rank, batch order, key)

Deadline slack is ``deadline - now - rank``; ``now`` is the same for every candidate, so it is left
out and the key never has to be recomputed as time passes. No deadline: infinite slack.

Pacing. Ranking a big batch purely by each action's own critical path (``pace`` left at its default,
which makes the third term ``-rank``) runs every episode's long chains first and every episode's
short chains last, so all episodes complete together at the end and their CPU assembly piles up
behind the last GPU action: 1,000 episodes on 256 GPUs came out 15% above the lower bound. ``pace``
gives each episode a place in its batch's pipeline: ``due``, when it would be done if the batch's
episodes went through the farm one after another (scaled by ``PACE_WEIGHT``), and ``behind``, the
work of the episodes after it. The third term is then the latest start of the action's chain for
its episode to be on time: earlier episodes go first, blended with later ones over a window,
episodes complete steadily, and the end of the batch is still ordered longest-chain-first (3%).
Across batches of equal priority, ``due`` interleaves them by when each would be done alone (like
virtual finish times in fair queuing). ``behind`` enters the slack with the same weight, so giving
a batch a deadline does not change the order of its own actions.

Example::

    ranks = upward_ranks({"a": 1, "b": 2, "c": 5, "d": 1}, {"a": ["b", "c"], "b": ["d"], "c": ["d"]})
    ranks["a"]      # 1 + 5 + 1 = 7.0
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from farm.policy.types import BatchTerms, Task

K = TypeVar("K", bound=Hashable)

INF = math.inf


def upward_ranks(
    durations: Mapping[K, float], children: Mapping[K, Iterable[K]], tails: Mapping[K, float] | None = None
) -> dict[K, float]:
    """HEFT upward rank of every key in ``durations``: its duration plus the largest rank among its
    children. Children absent from ``durations`` are ignored; ``tails`` gives an action a floor on
    that maximum, for descendants that are not known yet (an episode's script, before it has run,
    has a template estimate of the episode behind it). Iterative, so 50,000-deep chains are fine.

    Raises ValueError on a cycle.
    """
    tails = tails or {}
    rank: dict[K, float] = {}
    for root in durations:
        if root in rank:
            continue
        stack = [(root, iter(children.get(root, ())))]
        on_path = {root}
        while stack:
            node, pending = stack[-1]
            for child in pending:
                if child in rank or child not in durations:
                    continue
                if child in on_path:
                    raise ValueError(f"cycle through {child!r}")
                stack.append((child, iter(children.get(child, ()))))
                on_path.add(child)
                break
            else:
                stack.pop()
                on_path.discard(node)
                best = tails.get(node, 0.0)
                for child in children.get(node, ()):
                    r = rank.get(child)
                    if r is not None and r > best:
                        best = r
                rank[node] = float(durations[node]) + best
    return rank


# How much of the later episodes' farm time counts against an episode. 1 orders a batch's episodes
# strictly as a pipeline; 0 is plain critical-path order. Measured with farm simulate (makespan over
# the lower bound): 1,000 episodes / 256 GPUs / 64 CPUs: 0 -> 1.154, 0.25 -> 1.028, 1 -> 1.037;
# with 32 CPUs: 0.1 -> 1.055, 0.25 -> 1.031; 200 episodes / 64 GPUs, 12 seeds: 0.25 -> at most
# 1.041, 1 -> at most 1.062.
PACE_WEIGHT = 0.25


@dataclass(frozen=True)
class Pace:
    """Where an episode sits in its batch's pipeline.

    ``due``: the batch's submission time plus the (weighted) farm time of this and every earlier
    episode; ``behind``: the (weighted) farm time of the episodes after it. See ``sort_key``.
    """

    due: float = 0.0
    behind: float = 0.0


NO_PACE = Pace()


def pace(
    episodes: Sequence[K], work_s: Mapping[K, float] | float, start: float = 0.0, weight: float = PACE_WEIGHT
) -> dict[K, Pace]:
    """The ``Pace`` of each episode of a batch, given in submission order.

    ``work_s``: an episode's estimated work on the farm's bottleneck resource over that resource's
    capacity (GPU-seconds / GPUs), per episode or one number for all; ``start``: the batch's
    submission time.
    """

    def work(e: K) -> float:
        return weight * (float(work_s) if isinstance(work_s, (int, float)) else float(work_s[e]))

    total = sum(work(e) for e in episodes)
    out: dict[K, Pace] = {}
    done = 0.0
    for episode in episodes:
        done += work(episode)
        out[episode] = Pace(start + done, total - done)
    return out


def sort_key(task: Task, batch: BatchTerms, rank: float, pace: Pace = NO_PACE) -> tuple[Any, ...]:
    """The order in which candidates are considered (smallest first): priority class desc, deadline
    slack asc, paced remaining critical path (see the module's doc), batch order, key.

    With the default pace this is exactly (-priority, deadline - rank, -rank, batch order, key).
    """
    slack = batch.deadline - rank - pace.behind if batch.deadline is not None else INF
    return (-batch.priority, slack, pace.due - rank, batch.order, task.key)
