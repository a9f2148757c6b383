"""What every ``farm`` command shares: settings from the environment and options, the common options,
log levels, and printing a benchmark's report."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pydantic import ValidationError

from farm.errors import UsageError
from farm.observe import logs
from farm.settings import Settings


def add_common(sp: argparse.ArgumentParser) -> None:
    """--store, --studio, --address, --num-cpus: where the work happens."""
    sp.add_argument("--store", help="artifact store: a directory or s3://bucket/prefix (env FARM_STORE)")
    sp.add_argument("--studio", help="the tenant whose store prefix and cache namespace to use (env FARM_STUDIO)")
    sp.add_argument("--address", help="an existing Ray cluster (env FARM_RAY_ADDRESS); default: start a local Ray")
    sp.add_argument("--num-cpus", type=int, help="CPUs for a local Ray (default: all)")


def level(args: argparse.Namespace) -> str:
    return ["WARNING", "INFO", "DEBUG"][min(getattr(args, "verbose", 0), 2)]


# setting -> (the option's dest, the option): settings_from_args lets these options override them
_OPTIONS = {
    "store": ("store", "--store"),
    "studio": ("studio", "--studio"),
    "ray_address": ("address", "--address"),
    "num_cpus": ("num_cpus", "--num-cpus"),
    "metrics_port": ("metrics_port", "--metrics-port"),
}


def settings_problems(exc: ValidationError, args: argparse.Namespace | None = None) -> str:
    """One line per problem, ``FARM_<NAME> (--option): message`` (the option where this command has
    it): never pydantic's dump with its links."""
    lines = []
    for err in exc.errors(include_url=False):
        name, *inner = [str(part) for part in err["loc"]] or ["settings"]
        dest, option = _OPTIONS.get(name, ("", ""))
        where = f"FARM_{name.upper()}" + (f" ({option})" if option and hasattr(args, dest) else "")
        error = (err.get("ctx") or {}).get("error")
        message = str(error) if err["type"] == "value_error" and error is not None else err["msg"]
        lines.append(": ".join([where, *inner, message]))
    return "\n".join(lines)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from FARM_* variables, overridden by whichever options this command has.
    Raises UsageError when they are not valid."""
    try:
        settings = Settings.from_env(
            store=getattr(args, "store", None),
            studio=getattr(args, "studio", None),
            ray_address=getattr(args, "address", None),
            num_cpus=getattr(args, "num_cpus", None),
            metrics_port=getattr(args, "metrics_port", None),
            log_level=level(args) if getattr(args, "verbose", 0) else None,
        )
    except ValidationError as exc:
        raise UsageError(logs.mask(settings_problems(exc, args))) from None
    logs.hide(
        settings.s3_access_key.get_secret_value(),
        settings.s3_secret_key.get_secret_value(),
        *settings.catalog().secrets(),
    )
    return settings


def print_report(report: dict[str, Any], args: argparse.Namespace) -> int:
    print(json.dumps({k: v for k, v in report.items() if k != "text"}) if args.json else report["text"])
    return 0
