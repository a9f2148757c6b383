"""Reading one spec file safely, once: a regular file of at most ``SpecLimits.max_bytes``, parsed by a YAML
loader that refuses what YAML would otherwise take quietly or crash on (deep nesting, alias bombs,
duplicate keys, values it cannot convert), each problem located. ``farm.loader`` validates what it reads.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from farm.core.spec import MAX_BATCH_EPISODES
from farm.errors import SpecProblem, UsageError

# What one spec file may be. The size limit and the folders a spec may name files in besides its own are
# settings (spec_max_bytes, spec_root: FARM_SPEC_MAX_BYTES, FARM_SPEC_ROOT), handed down as SpecLimits.
MAX_SPEC_BYTES = 1 << 20
MAX_DEPTH = 50  # nesting of mappings and lists; a script needs 6
MAX_NODES = 100_000  # values in one document, aliases expanded; a 360-shot script has about 10,000
MAX_GLOB_MATCHES = 2 * MAX_BATCH_EPISODES  # files a batch's patterns may match, series files included
SPEC_MAX_BYTES_ENV, SPEC_ROOT_ENV = "FARM_SPEC_MAX_BYTES", "FARM_SPEC_ROOT"


@dataclass(frozen=True)
class SpecLimits:
    """How big one spec file may be, and the folders (``roots``) besides a spec's own folder whose files it
    may name. Built from the settings with ``of``."""

    max_bytes: int = MAX_SPEC_BYTES
    roots: tuple[Path, ...] = ()

    @classmethod
    def of(cls, settings: Any) -> SpecLimits:
        """The limits in ``settings`` (a farm.settings.Settings: ``spec_max_bytes``, ``spec_root``)."""
        roots = tuple(Path(r).resolve() for r in settings.spec_root.split(os.pathsep) if r)
        return cls(max_bytes=settings.spec_max_bytes, roots=roots)

    @classmethod
    def from_env(cls) -> SpecLimits:
        """The limits from FARM_SPEC_MAX_BYTES and FARM_SPEC_ROOT alone, read by Settings: for callers that
        do not pass their settings' limits yet. Raises UsageError when they are not valid."""
        from farm.settings import Settings  # only this fallback needs it

        env = {name: os.environ[name] for name in (SPEC_MAX_BYTES_ENV, SPEC_ROOT_ENV) if name in os.environ}
        try:
            return cls.of(Settings.from_env(env))
        except ValidationError as exc:
            raise UsageError(
                "; ".join(f"FARM_{str(e['loc'][0]).upper()}: {e['msg']}" for e in exc.errors(include_url=False))
            ) from None


class _PyParser(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):
    def __init__(self, text: str):
        yaml.reader.Reader.__init__(self, text)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)


_Base: Any = getattr(yaml, "cyaml", None) and getattr(yaml.cyaml, "CParser", None) or _PyParser  # libyaml's if built


class _SpecLoader(yaml.composer.Composer, _Base, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
    """A safe loader that composes the C parser's events itself, to refuse what YAML would otherwise take
    quietly or crash on: nesting beyond MAX_DEPTH, documents over MAX_NODES values once aliases are expanded
    (10 KB of aliases can stand for a million lines), duplicate keys (the last one would win, the other lines
    vanish: collected in ``duplicates``), and explicit tags whose values Python cannot convert."""

    def __init__(self, text: str):
        _Base.__init__(self, text)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self.depth = 0
        self.sizes: dict[int, int] = {}
        self.duplicates: list[tuple[str, int, int]] = []  # (key, first line, second line)

    def compose_node(self, parent: Any, index: Any) -> Any:
        alias = self.check_event(yaml.AliasEvent)
        mark = self.peek_event().start_mark
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nests deeper than {MAX_DEPTH} levels; a spec needs far fewer", mark
            )
        node = super().compose_node(parent, index)
        self.depth -= 1
        if alias and id(node) not in self.sizes:
            raise yaml.composer.ComposerError(None, None, "an alias refers to the node that holds it", mark)
        if not alias:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            self.sizes[id(node)] = 1 + sum(self.sizes[id(child)] for child in children)
        if self.sizes[id(node)] > MAX_NODES:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"holds more than {MAX_NODES} values (aliases expanded); a spec needs far fewer: "
                "write it out without aliases (*name) that repeat large parts",
                mark,
            )
        return node

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        """As YAML 1.2: ``12:30`` is text, never the base-60 number 750 that YAML 1.1 makes of it."""
        tag = super().resolve(kind, value, implicit)
        if kind is yaml.ScalarNode and implicit[0] and ":" in value and tag.endswith((":int", ":float")):
            return "tag:yaml.org,2002:str"
        return tag

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple[str, str], yaml.Node] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            first = seen.setdefault((key.tag, key.value), key)
            if first is not key:
                self.duplicates.append((key.value, first.start_mark.line + 1, key.start_mark.line + 1))
        return node

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, IndexError, KeyError, AttributeError, TypeError, OverflowError) as exc:
            what = node.tag.rsplit(":", 1)[-1]
            if "digits" in str(exc) and what == "int":
                why = f"is a number of {len(str(node.value))} digits; a spec's numbers have at most 4300"
            else:
                why = f"cannot be read as {what}; write a plain value, without the !!{what} tag"
            raise yaml.constructor.ConstructorError(
                None, None, f"{str(node.value)[:60]!r} {why}", node.start_mark
            ) from None


@dataclass(frozen=True)
class Doc:
    """A spec file parsed once: its YAML node tree (for lines), its data, and what stopped or marred reading it."""

    node: yaml.Node | None = None
    data: Any = None
    problems: tuple[SpecProblem, ...] = ()
    duplicates: tuple[SpecProblem, ...] = ()


def _read_bytes(path: Path, limit: int) -> bytes | str:
    """The file's bytes, or why not: only a regular file, at most ``limit`` bytes, is read."""
    too_big = (
        f"is %d bytes, over the {limit} a spec file may have; split it, or raise the limit with {SPEC_MAX_BYTES_ENV}"
    )
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return "is not a regular file (a folder, device or pipe); name a spec file"
        if st.st_size > limit:
            return too_big % st.st_size
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # never blocks on a FIFO swapped in
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return "is not a regular file (a folder, device or pipe); name a spec file"
            data = f.read(limit + 1)
    except FileNotFoundError:
        return "file not found; check the path"
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        return f"cannot be read: {exc}"
    return too_big % len(data) if len(data) > limit else data


def parse(path: Path, max_bytes: int = MAX_SPEC_BYTES) -> Doc:
    data = _read_bytes(path, max_bytes)
    if isinstance(data, str):
        return Doc(problems=(SpecProblem(str(path), "", data),))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Doc(problems=(SpecProblem(str(path), "", f"cannot be read: {exc}; save it as UTF-8"),))
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        value = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        message = str(getattr(exc, "problem", None) or exc)
        if getattr(exc, "context", None):
            message += f" ({exc.context})"
        return Doc(
            problems=(SpecProblem(str(path), "", f"is not valid YAML: {message}", mark.line + 1 if mark else None),)
        )
    finally:
        loader.dispose()
    duplicates = tuple(
        SpecProblem(
            str(path),
            "",
            f"{key!r} is given twice in one mapping (lines {first} and {second}) and YAML would keep only the "
            "last; keep one of them",
            second,
        )
        for key, first, second in loader.duplicates
    )
    return Doc(node=node, data=value, duplicates=duplicates)


class Docs:
    """Each file parsed once per load or validate call, within ``limits``."""

    def __init__(self, limits: SpecLimits) -> None:
        self.limits = limits
        self._docs: dict[Path, Doc] = {}

    def __call__(self, path: Path) -> Doc:
        if path not in self._docs:
            self._docs[path] = parse(path, self.limits.max_bytes)
        return self._docs[path]
