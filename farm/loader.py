"""Reading spec files: YAML -> validated models, with errors that name file, line, field and fix.

Every problem in every file is collected before anything is raised, so one run of
``farm validate`` shows all of them.
"""

from __future__ import annotations

import difflib
import glob
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from farm.core.spec import SPEC_FIELDS, BatchSpec, Episode, Series, check_episode
from farm.errors import SpecError, SpecProblem


@dataclass(frozen=True)
class LoadedEpisode:
    path: Path
    series_path: Path
    series: Series
    episode: Episode


def _field_path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """The 1-based line of the deepest YAML node that ``loc`` reaches."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            if match is None:
                key = next((k for k, _ in node.value if getattr(k, "value", None) == part), None)
                return key.start_mark.line + 1 if key is not None else line
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        line = node.start_mark.line + 1
    return line


def _message(err: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        name = str(err["loc"][-1])
        close = difflib.get_close_matches(name, SPEC_FIELDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "; remove it or check its spelling"
        return f"unknown field {name!r}{hint}"
    if kind == "missing":
        return "is required but missing; add it"
    if kind == "string_pattern_mismatch":
        pattern = err.get("ctx", {}).get("pattern", "")
        if "a-z0-9_-" in pattern:
            return (
                f"{err['input']!r} is not a valid id: use lower-case letters, digits, '-' and '_' "
                "(no '/', '..' or spaces), at most 63 characters"
            )
        if pattern.startswith("^#"):
            return f"{err['input']!r} is not a colour; write it as #rrggbb"
        return f"{err['input']!r} is not valid: {err['msg']}"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return msg


M = TypeVar("M", bound=BaseModel)


def _validate(model: type[M], path: Path, problems: list[SpecProblem]) -> M | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problems.append(SpecProblem(str(path), "", "file not found; check the path"))
        return None
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(SpecProblem(str(path), "", f"cannot be read: {exc}"))
        return None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problems.append(
            SpecProblem(
                str(path), "", f"is not valid YAML: {getattr(exc, 'problem', exc)}", mark.line + 1 if mark else None
            )
        )
        return None
    if not isinstance(data, dict):
        problems.append(SpecProblem(str(path), "", f"must be a YAML mapping of fields, not {type(data).__name__}"))
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            problems.append(SpecProblem(str(path), _field_path(loc), _message(err), _line_of(node, loc)))
        return None


def load_series(path: Path) -> Series:
    problems: list[SpecProblem] = []
    series = _validate(Series, Path(path), problems)
    if problems:
        raise SpecError(problems)
    assert series is not None
    return series


def _load_episode(path: Path, problems: list[SpecProblem]) -> LoadedEpisode | None:
    before = len(problems)
    episode = _validate(Episode, path, problems)
    if episode is None:
        return None
    series_path = (path.parent / episode.series).resolve()
    series = _validate(Series, series_path, problems)
    if series is None:
        if len(problems) > before and problems[-1].message.startswith("file not found"):
            problems[-1] = SpecProblem(
                str(path), "series", f"names {episode.series!r}, but {series_path} does not exist"
            )
        return None
    for field, message in check_episode(series, episode):
        problems.append(SpecProblem(str(path), field, message))
    if len(problems) > before:
        return None
    return LoadedEpisode(path=path, series_path=series_path, series=series, episode=episode)


def load_episode(path: Path) -> LoadedEpisode:
    """Load and fully validate an episode and its series; raises SpecError listing every problem."""
    problems: list[SpecProblem] = []
    loaded = _load_episode(Path(path), problems)
    if problems or loaded is None:
        raise SpecError(problems)
    return loaded


@dataclass(frozen=True)
class LoadedBatch:
    path: Path
    spec: BatchSpec
    episodes: list[LoadedEpisode]


def _load_batch(path: Path, now: datetime, problems: list[SpecProblem]) -> LoadedBatch | None:
    before = len(problems)
    spec = _validate(BatchSpec, path, problems)
    if spec is None:
        return None
    if spec.deadline is not None and spec.deadline <= now:
        problems.append(
            SpecProblem(
                str(path),
                "deadline",
                f"{spec.deadline.isoformat()} is already past "
                f"(now {now.isoformat(timespec='seconds')}); give a future time with its zone",
            )
        )
    files: list[Path] = []
    for i, pattern in enumerate(spec.episodes):
        matches = sorted(glob.glob(str(path.parent / pattern), recursive=True))
        if not matches:
            problems.append(
                SpecProblem(
                    str(path),
                    f"episodes[{i}]",
                    f"{pattern!r} matches no file (relative to {path.parent}); check the path or the pattern",
                )
            )
        files += [Path(m).resolve() for m in matches if Path(m).resolve() not in files]
    episodes: list[LoadedEpisode] = []
    seen: dict[tuple[str, str], Path] = {}
    for file in files:
        loaded = _load_episode(file, problems)
        if loaded is None:
            continue
        ident = (loaded.series.id, loaded.episode.slug)
        if ident in seen:
            problems.append(
                SpecProblem(
                    str(file),
                    "number",
                    f"episode {ident[1]} of series {ident[0]} is also "
                    f"{seen[ident]}; each episode may appear once in a batch",
                )
            )
        seen[ident] = file
        episodes.append(loaded)
    if len(problems) > before:
        return None
    return LoadedBatch(path=path, spec=spec, episodes=episodes)


def load_batch(path: Path, now: datetime) -> LoadedBatch:
    """Load a batch and every episode it names, fully validated; raises SpecError listing every problem.

    ``now`` (timezone-aware) is passed in so that "deadline in the past" is decided by the caller's clock.
    """
    problems: list[SpecProblem] = []
    loaded = _load_batch(Path(path), now, problems)
    if problems or loaded is None:
        raise SpecError(problems)
    return loaded


def validate_files(paths: Iterable[Path], now: datetime | None = None) -> list[SpecProblem]:
    """Every problem in these files (episodes or series, told apart by their fields)."""
    problems: list[SpecProblem] = []
    for path in map(Path, paths):
        try:
            head = yaml.safe_load(path.read_text(encoding="utf-8"))
        except Exception:  # reported precisely by _validate below
            head = None
        if isinstance(head, dict) and "characters" in head and "number" not in head:
            _validate(Series, path, problems)
        elif isinstance(head, dict) and "studio" in head and "episodes" in head:
            _load_batch(path, now or datetime.now().astimezone(), problems)
        else:
            _load_episode(path, problems)
    return problems


def write_examples(dest: Path) -> list[Path]:
    """Write the shipped example series and episodes under ``dest``; return the files written."""
    root = resources.files("farm") / "examples"
    written = []
    for series in root.iterdir():
        if not series.is_dir():
            continue
        for f in series.iterdir():
            if f.name.endswith(".yaml"):
                target = dest / series.name / f.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(f.read_bytes())
                written.append(target)
    return sorted(written)
