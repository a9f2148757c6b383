"""Reading spec files: YAML -> validated models, with errors that name file, line, field and fix.

Every problem in every file is collected before anything is raised, so one run of
``farm validate`` shows all of them.
"""

from __future__ import annotations

import difflib
import glob
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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


def _loc(field: str) -> tuple:
    """``outline[0].lines[1].speaker`` -> ("outline", 0, "lines", 1, "speaker")."""
    return tuple(int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", field))


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


def _validate(model: type[M], path: Path, problems: list[SpecProblem], prepare: Any = None) -> M | None:
    """The model in ``path``, or None with its problems added. ``prepare(data)`` may rewrite the
    parsed mapping first, returning (field, message) problems of its own."""
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
    for field, message in prepare(data) if prepare is not None else ():
        problems.append(SpecProblem(str(path), field, message, _line_of(node, (field,))))
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
    checked = check_episode(series, episode)
    if checked:
        node = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)  # parsed once already
        for field, message in checked:
            problems.append(SpecProblem(str(path), field, message, _line_of(node, _loc(field))))
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


_RELATIVE = re.compile(r"^\+(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$")
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})(?:\s+(today|tomorrow))?\s+(\S+)$")
DEADLINE_FORMS = (
    'an ISO time with its zone (2026-11-21T06:00:00+08:00), a time from now ("+8h", "+1d6h", "+90m"), '
    'or a clock time in a zone ("06:00 Asia/Shanghai": the next 06:00 there; "06:00 tomorrow UTC")'
)


def _zone(name: str) -> tzinfo | None:
    if re.fullmatch(r"[+-]\d{2}:\d{2}", name):
        sign = 1 if name[0] == "+" else -1
        return timezone(sign * timedelta(hours=int(name[1:3]), minutes=int(name[4:6])))
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def resolve_deadline(text: str, now: datetime) -> datetime | None:
    """A relative deadline (see DEADLINE_FORMS) as an aware time after ``now``; None if ``text`` is
    not one of the relative forms."""
    text = " ".join(text.split())
    rel = _RELATIVE.match(text)
    if rel and any(rel.groups()):
        days, hours, minutes = (int(g or 0) for g in rel.groups())
        return now + timedelta(days=days, hours=hours, minutes=minutes)
    clock = _CLOCK.match(text)
    if not clock:
        return None
    hour, minute, day, zone_name = int(clock[1]), int(clock[2]), clock[3], clock[4]
    zone = _zone("UTC" if zone_name in ("Z", "UTC") else zone_name)
    if zone is None or hour > 23 or minute > 59:
        return None
    local_now = now.astimezone(zone)
    at = local_now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if day == "tomorrow" or day is None and at <= local_now:
        at = (local_now + timedelta(days=1)).replace(hour=hour, minute=minute, second=0, microsecond=0)
    return at


def _deadline_of(now: datetime) -> Any:
    """Rewrites a batch's relative deadline as the time it means now (``_validate``'s prepare)."""

    def prepare(data: dict) -> list[tuple[str, str]]:
        raw = data.get("deadline")
        if not isinstance(raw, str):
            return []  # a time YAML parsed already, or none: the model checks it
        resolved = resolve_deadline(raw, now)
        if resolved is not None:
            data["deadline"] = resolved
            return []
        try:
            datetime.fromisoformat(raw.strip())
        except ValueError:
            data.pop("deadline")
            return [("deadline", f"{raw!r} is not a deadline: write {DEADLINE_FORMS}")]
        return []  # an ISO time in quotes: the model checks it has a zone

    return prepare


def _is_series(path: Path) -> bool:
    """Whether a file looks like a series spec (characters, no episode number): a glob of a batch's
    episodes may match the series file beside them."""
    try:
        head = yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception:  # not readable or not YAML: validated (and reported) as an episode
        return False
    return isinstance(head, dict) and "characters" in head and "number" not in head


def _load_batch(path: Path, now: datetime, problems: list[SpecProblem]) -> LoadedBatch | None:
    before = len(problems)
    spec = _validate(BatchSpec, path, problems, prepare=_deadline_of(now))
    if spec is None:
        return None
    if spec.deadline is not None and spec.deadline <= now:
        problems.append(
            SpecProblem(
                str(path),
                "deadline",
                f"{spec.deadline.isoformat()} is already past "
                f"(now {now.isoformat(timespec='seconds')}); give a future time with its zone, "
                'or a relative one ("+8h", "06:00 Asia/Shanghai")',
            )
        )
    files: list[Path] = []
    for i, pattern in enumerate(spec.episodes):
        matches = [Path(m).resolve() for m in sorted(glob.glob(str(path.parent / pattern), recursive=True))]
        if glob.has_magic(pattern):  # a pattern's series files are not episodes; a file named alone is
            matches = [m for m in matches if not _is_series(m)]
        if not matches:
            problems.append(
                SpecProblem(
                    str(path),
                    f"episodes[{i}]",
                    f"{pattern!r} matches no episode file (relative to {path.parent}); check the path or the pattern",
                )
            )
        files += [m for m in matches if m not in files]
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


def write_examples(dest: Path, force: bool = False) -> tuple[list[Path], list[Path]]:
    """Write the shipped example series and episodes under ``dest`` that are missing there; return
    ``(written, kept)``. A file identical to the shipped one is left alone; one that differs (the user
    edited it) is kept and listed in ``kept``, unless ``force``, which writes the shipped one over it."""
    root = resources.files("farm") / "examples"
    written, kept = [], []
    for series in root.iterdir():
        if not series.is_dir():
            continue
        for f in series.iterdir():
            if f.name.endswith(".yaml"):
                target, shipped = dest / series.name / f.name, f.read_bytes()
                try:
                    current: bytes | None = target.read_bytes()
                except FileNotFoundError:
                    current = None
                if current == shipped:
                    continue
                if current is not None and not force:
                    kept.append(target)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(shipped)
                written.append(target)
    return sorted(written), sorted(kept)
