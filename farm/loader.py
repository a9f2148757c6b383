"""Reading spec files: YAML -> validated models, with errors that name file, line, field and fix.

Every problem in every file is collected before anything is raised, so one run of
``farm validate`` shows all of them.
"""

from __future__ import annotations

import difflib
import glob
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone, tzinfo
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ValidationError

from farm.core.spec import MAX_BATCH_EPISODES, BatchSpec, Episode, Series, check_episode
from farm.errors import SpecError, SpecProblem
from farm.specfile import MAX_GLOB_MATCHES, SPEC_ROOT_ENV, Docs, SpecLimits


def _docs(limits: SpecLimits | None) -> Docs:
    """The files of one call, read within ``limits`` (until every caller passes its settings' limits: the
    FARM_SPEC_* variables)."""
    return Docs(limits if limits is not None else SpecLimits.from_env())


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
    """The 1-based line of the deepest YAML node that ``loc`` reaches: a field's key, a list's item."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None)
            if pair is None:
                break
            line, node = pair[0].start_mark.line + 1, pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def field_line(path: Path, field: str) -> int | None:
    """The line of ``field`` (``judges.clip[0].thresholds.x``) in the spec file at ``path``, if it can be read."""
    try:
        return _line_of(_docs(None)(Path(path)).node, _loc(field))
    except Exception:  # a problem found elsewhere is still reported, without its line
        return None


def _loc(field: str) -> tuple:
    """``outline[0].lines[1].speaker`` -> ("outline", 0, "lines", 1, "speaker")."""
    return tuple(int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", field))


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The fields of the model that holds the last part of ``loc``: where an unknown field was written."""
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            continue  # a list index, or a dict key
        nested = [field.annotation]
        while nested:
            kind = nested.pop()
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                model = kind
                break
            nested += [arg for arg in get_args(kind) if arg is not type(None)]
    return sorted(model.model_fields)


def _scalar(node: yaml.Node | None, loc: tuple) -> str | None:
    """The text of the unquoted YAML scalar at ``loc``, if that is what was written there."""
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return None
    return node.value if isinstance(node, yaml.ScalarNode) and not node.style else None


def _message(err: Any, model: type[BaseModel] = BaseModel, node: yaml.Node | None = None) -> str:
    kind, loc = err["type"], tuple(err["loc"])
    if kind == "extra_forbidden":
        name, fields = str(loc[-1]), _fields_at(model, loc)
        close = difflib.get_close_matches(name, fields, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; remove it or check its spelling ({', '.join(fields)})"
        return f"unknown field {name!r}{hint}"
    if kind == "missing":
        return "is required but missing; add it"
    written = _scalar(node, loc)
    if kind == "string_type" and written is not None:  # YAML 1.1 reads no, on, 12.5, 2026-01-01 as non-text
        name = next((str(p) for p in reversed(loc) if isinstance(p, str)), "value")
        value = err["input"]
        what = f"the yes/no value {str(value).lower()}" if isinstance(value, bool) else repr(value)
        return f'{written} is read by YAML as {what}, not as text; quote it: {name}: "{written}"'
    if kind in ("int_parsing", "float_parsing") and written is not None:
        return f"{written!r} is not a number; write a number"
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


def _validate(model: type[M], path: Path, problems: list[SpecProblem], docs: Docs, prepare: Any = None) -> M | None:
    """The model in ``path``, or None with its problems added. ``prepare(data)`` may rewrite the
    parsed mapping first, returning (field, message) problems of its own."""
    doc = docs(path)
    if doc.problems:
        problems.extend(doc.problems)
        return None
    before = len(problems)
    problems.extend(doc.duplicates)
    node, data = doc.node, doc.data
    if not isinstance(data, dict):
        problems.append(SpecProblem(str(path), "", f"must be a YAML mapping of fields, not {type(data).__name__}"))
        return None
    if prepare is not None:
        data = dict(data)  # the parsed document stays as it was read
        for field, message in prepare(data):
            problems.append(SpecProblem(str(path), field, message, _line_of(node, (field,))))
    try:
        spec = model.model_validate(data, context={"yaml": True})  # what only a spec file's text can get wrong
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            if not loc and model is Series:  # a check across fields: say which field it is about
                loc = _series_field(data, _message(err))
            problems.append(SpecProblem(str(path), _field_path(loc), _message(err, model, node), _line_of(node, loc)))
        return None
    return spec if len(problems) == before else None


def _series_field(data: dict, message: str) -> tuple:
    """The field a series check across fields is about (its message names it), for its line."""
    chars = data.get("characters")
    ids = [c.get("id") if isinstance(c, dict) else None for c in chars] if isinstance(chars, list) else []
    if message.startswith(("language ", "fps ")):
        return (message.split()[0],)
    dupe = re.match(r"character ids must be unique; (\S+?)[,\s]", message)
    if dupe and ids.count(dupe[1]) > 1:
        return ("characters", len(ids) - 1 - ids[::-1].index(dupe[1]), "id")
    voice = re.match(r"characters '.*' and '(.*)' have the same voice", message)
    if voice and voice[1] in ids:
        return ("characters", ids.index(voice[1]), "voice")
    return ()


def _inside(base: Path, written: str, field: str, spec: Path, docs: Docs) -> Path | SpecProblem:
    """``written`` (a path in the spec at ``spec``) resolved against ``base``, if it stays in that folder's
    tree or under one of the limits' roots (FARM_SPEC_ROOT); else the problem, naming ``field``."""
    roots = [base.resolve(), *docs.limits.roots]
    target = (base / written).resolve()
    escapes = Path(written).is_absolute() or ".." in Path(written).parts
    if any(target.is_relative_to(r) for r in roots[0 if not escapes else 1 :]):
        return target
    return SpecProblem(
        str(spec),
        field,
        f"{written!r} is outside this spec's folder {base}; name a file in it or below it, relative to it "
        f"(no absolute path, no '..'), or allow a folder with {SPEC_ROOT_ENV}",
    )


def load_series(path: Path, limits: SpecLimits | None = None) -> Series:
    problems: list[SpecProblem] = []
    series = _validate(Series, Path(path), problems, _docs(limits))
    if problems:
        raise SpecError(problems)
    assert series is not None
    return series


def _load_episode(path: Path, problems: list[SpecProblem], docs: Docs) -> LoadedEpisode | None:
    before = len(problems)
    episode = _validate(Episode, path, problems, docs)
    if episode is None:
        return None
    series_path = _inside(path.parent, episode.series, "series", path, docs)
    if isinstance(series_path, SpecProblem):
        problems.append(replace(series_path, line=_line_of(docs(path).node, ("series",))))
        return None
    series = _validate(Series, series_path, problems, docs)
    if series is None:
        if len(problems) > before and problems[-1].message.startswith("file not found"):
            problems[-1] = SpecProblem(
                str(path), "series", f"names {episode.series!r}, but {series_path} does not exist"
            )
        return None
    checked = check_episode(series, episode)
    if checked:
        node = docs(path).node
        for field, message in checked:
            problems.append(SpecProblem(str(path), field, message, _line_of(node, _loc(field))))
    if len(problems) > before:
        return None
    return LoadedEpisode(path=path, series_path=series_path, series=series, episode=episode)


def load_episode(path: Path, limits: SpecLimits | None = None) -> LoadedEpisode:
    """Load and fully validate an episode and its series; raises SpecError listing every problem."""
    problems: list[SpecProblem] = []
    loaded = _load_episode(Path(path), problems, _docs(limits))
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


_SERIES_ONLY = set(Series.model_fields) - set(Episode.model_fields)
_EPISODE_ONLY = set(Episode.model_fields) - set(Series.model_fields)


def _is_series(head: Any) -> bool:
    """Whether a parsed file is a series spec: no episode's ``series`` or ``number``, and more fields only a
    series has than fields only an episode has (so a series with a misspelled ``characters:`` is still one).
    A glob of a batch's episodes may match the series file beside them. Not readable or not YAML: validated
    (and reported) as an episode."""
    if not isinstance(head, dict) or "series" in head or "number" in head:
        return False
    return "characters" in head or len(_SERIES_ONLY & set(head)) > len(_EPISODE_ONLY & set(head))


def _load_batch(path: Path, now: datetime, problems: list[SpecProblem], docs: Docs) -> LoadedBatch | None:
    before = len(problems)
    spec = _validate(BatchSpec, path, problems, docs, prepare=_deadline_of(now))
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
    found = 0
    for i, pattern in enumerate(spec.episodes):
        line = _line_of(docs(path).node, ("episodes", i))
        where = _inside(path.parent, pattern, f"episodes[{i}]", path, docs)
        if isinstance(where, SpecProblem):
            problems.append(replace(where, line=line))
            continue
        if glob.has_magic(pattern):
            names = []
            for name in glob.iglob(pattern, root_dir=path.parent, recursive=True):
                found += 1
                if found > MAX_GLOB_MATCHES:
                    break
                names.append(name)
        else:
            names = [pattern] if (path.parent / pattern).exists() else []
        if found > MAX_GLOB_MATCHES:
            problems.append(
                SpecProblem(
                    str(path),
                    f"episodes[{i}]",
                    f"{pattern!r} takes the batch's patterns past {MAX_GLOB_MATCHES} matching files; "
                    f"a batch has at most {MAX_BATCH_EPISODES} episodes: narrow the pattern",
                    line,
                )
            )
            break
        matches = []
        for name in sorted(names):
            match = _inside(path.parent, name, f"episodes[{i}]", path, docs)
            if isinstance(match, SpecProblem):  # a link out of the batch's folder
                problems.append(replace(match, line=line))
            elif match.is_file() or not match.exists():
                matches.append(match)
        if glob.has_magic(pattern):  # a pattern's series files are not episodes; a file named alone is
            matches = [m for m in matches if not _is_series(docs(m).data)]
        if not matches:
            problems.append(
                SpecProblem(
                    str(path),
                    f"episodes[{i}]",
                    f"{pattern!r} matches no episode file (relative to {path.parent}); check the path or the pattern",
                    line,
                )
            )
        files += [m for m in matches if m not in files]
    if len(files) > MAX_BATCH_EPISODES:
        problems.append(
            SpecProblem(
                str(path),
                "episodes",
                f"match {len(files)} episode files; a batch has at most {MAX_BATCH_EPISODES}: split it",
                _line_of(docs(path).node, ("episodes",)),
            )
        )
        return None
    episodes: list[LoadedEpisode] = []
    seen: dict[tuple[str, str], Path] = {}
    for file in files:
        loaded = _load_episode(file, problems, docs)
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
                    _line_of(docs(file).node, ("number",)),
                )
            )
        seen[ident] = file
        episodes.append(loaded)
    if len(problems) > before:
        return None
    return LoadedBatch(path=path, spec=spec, episodes=episodes)


def load_batch(path: Path, now: datetime, limits: SpecLimits | None = None) -> LoadedBatch:
    """Load a batch and every episode it names, fully validated; raises SpecError listing every problem.

    ``now`` (timezone-aware) is passed in so that "deadline in the past" is decided by the caller's clock.
    """
    problems: list[SpecProblem] = []
    loaded = _load_batch(Path(path), now, problems, _docs(limits))
    if problems or loaded is None:
        raise SpecError(problems)
    return loaded


def validate_files(
    paths: Iterable[Path], now: datetime | None = None, limits: SpecLimits | None = None
) -> list[SpecProblem]:
    """Every problem in these files (episodes, series or batches, told apart by their fields)."""
    problems: list[SpecProblem] = []
    docs = _docs(limits)
    for path in map(Path, paths):
        head = docs(path).data  # a file that cannot be read or parsed is reported by _validate below
        if _is_series(head):
            _validate(Series, path, problems, docs)
        elif isinstance(head, dict) and "studio" in head and "episodes" in head:
            _load_batch(path, now or datetime.now().astimezone(), problems, docs)
        else:
            _load_episode(path, problems, docs)
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
