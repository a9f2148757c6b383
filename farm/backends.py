"""Which backend does each stage's work: names from settings -> backend objects under workers/.

Backends are imported lazily, where the work runs, so the planner and the CLI start fast and a
machine only needs the libraries of the backends it actually runs.
"""

from __future__ import annotations

import importlib
from typing import Mapping

from farm.plan import BackendChoice
from workers.api import Backend

# (stage, name) -> "module:attribute"
REGISTRY: dict[tuple[str, str], str] = {
    ("script", "outline"): "workers.script.outline:BACKEND",
    ("image", "pillow"): "workers.image.pillow:BACKEND",
    ("video", "ffmpeg-motion"): "workers.video.motion:BACKEND",
    ("dubbing", "espeak-ng"): "workers.dubbing.espeak:BACKEND",
    ("assembly", "ffmpeg"): "workers.assembly.ffmpeg:BACKEND",
    # no work at all: for measuring the farm's own overhead and testing scheduling
    **{(stage, "noop"): f"workers.noop:BACKENDS.{stage}" for stage in ("script", "image", "video", "dubbing", "assembly")},
}


class UnknownBackend(ValueError):
    pass


def load(stage: str, name: str) -> Backend:
    try:
        target = REGISTRY[(stage, name)]
    except KeyError:
        known = ", ".join(n for s, n in REGISTRY if s == stage)
        raise UnknownBackend(f"no {stage} backend named {name!r} (known: {known})") from None
    module, _, path = target.partition(":")
    attr, _, item = path.partition(".")
    found = getattr(importlib.import_module(module), attr)
    return found[item] if item else found


def choose(names: Mapping[str, str]) -> dict[str, BackendChoice]:
    """Stage -> the chosen backend's name and version (the version enters every action key)."""
    return {stage: BackendChoice(name, load(stage, name).version) for stage, name in names.items()}


def required_tools(names: Mapping[str, str]) -> list[str]:
    """Programs the chosen backends need on PATH (checked before anything runs)."""
    tools: list[str] = []
    for stage, name in names.items():
        for tool in getattr(load(stage, name), "tools", ()):
            if tool not in tools:
                tools.append(tool)
    return tools
