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


BACKENDS = {stage: Noop(stage) for stage in ("script", "image", "video", "dubbing", "assembly")}
