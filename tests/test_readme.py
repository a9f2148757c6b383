"""The README's promises hold: CI runs its test command, and its commands name real things."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _commands():
    block = re.search(r"## Two commands.*?```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_two_commands():
    """The README shows exactly two commands: set-up + render, and the tests."""
    setup, tests = _commands()
    assert "deploy/setup.sh" in setup and "farm render examples/" in setup
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command():
    """.ci/run calls the README's test command verbatim."""
    _, tests = _commands()
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_readme_example_exists():
    """The episode the README renders is a shipped example."""
    setup, _ = _commands()
    example = re.search(r"farm render examples/(\S+)", setup).group(1)
    assert (ROOT / "farm" / "examples" / example).is_file()
