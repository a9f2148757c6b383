"""The ``farm`` command: one module per command group, each with an ``add_parser(sub, ...)``."""

from farm.cli.app import main

__all__ = ["main"]
