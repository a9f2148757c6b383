"""A shot in time, and what a script fixes of each shot (pure): where a shot's lines sit and how long
the shot lasts, and the actions of a shot that its script alone decides. farm.core.plan builds them;
farm.core.talking reads them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from farm.core.actions import Action
from farm.core.script import Shot
from farm.core.spec import SAMPLE_RATE

# Where the dialogue sits inside a shot: a breath before the first line, between lines, after the last.
LEAD_S, GAP_S, TAIL_S = 0.25, 0.30, 0.45


@dataclass(frozen=True)
class ShotLayout:
    frames: int
    total_samples: int
    offsets: tuple[int, ...]  # where each line starts, in samples from the shot's start


def layout_shot(shot: Shot, line_samples: list[int], fps: int) -> ShotLayout:
    """Place a shot's lines in time and size the shot to hold them (whole frames, whole samples)."""
    spf = SAMPLE_RATE // fps  # exact: every supported fps divides the sample rate
    offsets, cursor = [], round(LEAD_S * SAMPLE_RATE)
    for n in line_samples:
        offsets.append(cursor)
        cursor += n + round(GAP_S * SAMPLE_RATE)
    needed = cursor - round(GAP_S * SAMPLE_RATE) + round(TAIL_S * SAMPLE_RATE) if line_samples else 0
    frames = max(math.ceil(shot.duration * fps), math.ceil(needed / spf), 1)
    return ShotLayout(frames=frames, total_samples=frames * spf, offsets=tuple(offsets))


@dataclass(frozen=True)
class ShotPlan:
    """One shot's actions that its script fixes: its keyframe, the next shot's in the same scene (a
    first/last-frame clip ends on it), and its lines."""

    shot: Shot
    keyframe: Action
    next_keyframe: Action | None
    lines: tuple[Action, ...]


@dataclass(frozen=True)
class ScriptPlan:
    """What a script fixes, whatever its lines' lengths: the script action (when there is one), the
    character sheets, keyframes and lines, and each shot's. Made once per script and reused each time
    the episode is planned again as lines are voiced."""

    actions: tuple[Action, ...]  # dependencies before dependants
    script_key: str | None
    shots: tuple[ShotPlan, ...]
    # each shot's clip and mux and its layout, once its lines' lengths are known: (shot index, the
    # lengths) -> (clip, mux, layout); a cache, so planning again as each line is voiced is cheap
    timed: dict[tuple[Any, ...], Action] = field(default_factory=dict, compare=False, repr=False)
