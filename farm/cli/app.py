"""The ``farm`` command: one module per command group, each registering itself with ``add_parser(sub)``.

    farm validate | render | report | examples      farm.cli.render
    farm bench episode|controller|dispatch|backends farm.cli.bench
    farm controller start|status|stop               farm.cli.batch
    farm batch submit|list|status|watch|cancel|events
    farm backends                                   farm.cli.backends
    farm models push|list                           farm.cli.models
    farm simulate [--bench]                         farm.cli.simulate

Settings come from FARM_* environment variables (see farm.settings); options override them.
Exit codes: 0 ok, 1 the work failed (or a bug: the traceback is printed), 2 bad input (specs,
options, settings, missing tools).
"""

from __future__ import annotations

import argparse
import sys
import traceback

from farm.cli import backends, batch, bench, models, render, simulate
from farm.cli.common import level
from farm.errors import FarmError, SpecError, UsageError
from farm.observe import logs
from workers.api import ConfigError, ToolMissing

GROUPS = (render, bench, batch, backends, models, simulate)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="farm", description="A render farm for AI short dramas.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v info logs, -vv debug logs")
    sub = p.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the ``farm`` command. Exit codes: 0 ok; 1 the work failed (or a bug: the traceback is
    printed); 2 the user's mistake (a spec, an option, a setting, a missing program)."""
    args = build_parser().parse_args(argv)
    logs.configure(level=level(args))
    try:
        return args.func(args)
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
        print(logs.mask(f"farm: internal error (a bug; please report it):\n{traceback.format_exc()}"), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
