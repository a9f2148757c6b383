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
}


class UnknownBackend(ValueError):
    pass


def load(stage: str, name: str) -> Backend:
    try:
        target = REGISTRY[(stage, name)]
    except KeyError:
        known = ", ".join(n for s, n in REGISTRY if s == stage)
        raise UnknownBackend(f"no {stage} backend named {name!r} (known: {known})") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


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
