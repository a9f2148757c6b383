"""The ``farm`` command: one module per command group, each registering itself with ``add_parser(sub)``.

    farm validate | render | report | examples      farm.cli.render
    farm bench episode|controller|dispatch|backends farm.cli.bench
    farm controller start|status|stop               farm.cli.batch
    farm batch submit|list|status|watch|cancel|events
    farm backends                                   farm.cli.backends
    farm models push|list                           farm.cli.models
    farm studio add|list|revoke                     farm.cli.studio
    farm simulate [--bench]                         farm.cli.simulate

Settings come from FARM_* environment variables (see farm.settings); options override them.
Exit codes: 0 ok, 1 the work failed (or a bug: the traceback is printed), 2 bad input (specs,
options, settings, missing tools), 130 interrupted, 141 the reader of standard output went away
(``farm batch events ID | head``), as a shell tool killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import sys
import traceback
from pathlib import Path

from farm.cli import backends, batch, bench, models, render, review, simulate, studio
from farm.cli.common import level
from farm.errors import FarmError, SpecError, UsageError
from farm.observe import logs
from workers.api import ConfigError, ToolMissing

GROUPS = (render, review, bench, batch, backends, models, simulate, studio)


SIGPIPE_EXIT = 128 + 13  # what a shell reports for a program killed by SIGPIPE


def version() -> str:
    """The installed farm's version; in a source tree that is not installed, pyproject.toml's."""
    from importlib import metadata

    try:
        return metadata.version("farm")
    except metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"), re.M)
        return found[1] if found else "unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="farm", description="A render farm for AI short dramas.")
    p.add_argument("--version", action="version", version=f"farm {version()}", help="print the version and exit")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v info logs, -vv debug logs")
    sub = p.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the ``farm`` command. Exit codes: 0 ok; 1 the work failed (or a bug: the traceback is
    printed); 2 the user's mistake (a spec, an option, a setting, a missing program)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:  # --help, --version or a usage error, printed by argparse
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            return _pipe_closed()
        raise
    logs.configure(level=level(args))
    try:
        status = args.func(args)
        sys.stdout.flush()  # a pipe's reader that has gone shows here, not at the interpreter's exit
        return status
    except BrokenPipeError:
        return _pipe_closed()
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    except (UsageError, ToolMissing, ConfigError) as exc:
        print(logs.mask(f"farm: {exc}"), file=sys.stderr)
        return 2
    except FarmError as exc:  # may quote a store's or a worker's error: never its credentials
        print(logs.mask(f"farm: failed: {exc}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception:  # a bug: keep the whole story
        return _internal_error()


def _internal_error() -> int:
    print(logs.mask(f"farm: internal error (a bug; please report it):\n{traceback.format_exc()}"), file=sys.stderr)
    return 1


def _pipe_closed() -> int:
    """``farm ... | head``: stop quietly with SIGPIPE's status, as a shell tool would. What is still
    buffered for stdout goes to /dev/null instead of failing again at exit (the advice of
    https://docs.python.org/3/library/signal.html#note-on-sigpipe)."""
    if not _stdout_gone():  # another pipe or socket broke: a bug
        return _internal_error()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return SIGPIPE_EXIT


def _stdout_gone() -> bool:
    """Whether standard output is a pipe whose reader has closed it (``| head``), not some other pipe
    or socket that broke (that would be a bug, reported as one)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll here, or stdout is not a file: cannot tell
        return False


if __name__ == "__main__":
    sys.exit(main())
