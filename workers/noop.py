"""A backend for every stage that does no work: tiny placeholder files and plausible facts.

For measuring the farm's own overhead (``farm bench dispatch``) and for tests of scheduling: the
graph, keys, store, journal and Ray are all real, only the media is not. Never a default.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from farm.core.plan import OUTPUTS  # every output the plan reads of each op
from workers.api import Estimate, Resources, StageError, StageResult, Usage


class Noop:
    """Writes one small file per output; a line reports a length from its text; ``sleep_s`` param waits."""

    name, version = "noop", "1"
    ops = tuple(OUTPUTS)
    judged = False  # placeholders, not media: no default judge measures them (farm.catalog.judging_for)
    resources = Resources(num_cpus=0.25)
    tools: tuple[str, ...] = ()

    def __init__(self, stage: str):
        self.stage = stage

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate:
        return Estimate(seconds=0.01)

    def run(self, op: str, inputs: Mapping[str, Path], params: Mapping[str, Any], out_dir: Path) -> StageResult:
        if op not in OUTPUTS or op == "script":
            raise StageError(f"noop cannot write {op!r} (give the episode a hand-written script)")
        if params.get("sleep_s"):
            time.sleep(float(params["sleep_s"]))
        files = {}
        for name in OUTPUTS[op]:
            files[name] = out_dir / f"{name}.bin"
            files[name].write_bytes(f"{op}:{name}".encode())
        meta = {"samples": 9_600 + 480 * len(params.get("text", ""))} if op == "line" else {}
        return StageResult(files=files, meta=meta, usage=Usage(model="noop"))


class NoopJudge(Noop):
    """Judges nothing: a take passes from take ``pass_from_take`` on (threshold, default 1), so tests of
    takes can script which takes fail without rendering media."""

    ops = ("judge",)
    judges = ("keyframe", "clip", "line", "episode")
    thresholds = {"pass_from_take": (1.0, 1.0, 10.0)}

    def run(self, op: str, inputs: Mapping[str, Path], params: Mapping[str, Any], out_dir: Path) -> StageResult:
        from workers.judge.common import Check, thresholds, verdict

        limit = thresholds(self.thresholds, params, "noop")["pass_from_take"]
        take = int(params.get("target", {}).get("take", 1))
        check = Check("take", take, limit, take >= limit, f"take {take}; passes from take {limit:g}", take / 10)
        result = verdict([check], out_dir)
        result.usage = Usage(model="noop")
        return result


BACKENDS = {stage: Noop(stage) for stage in ("script", "image", "video", "dubbing", "lipsync", "assembly")}
BACKENDS["judge"] = NoopJudge("judge")
