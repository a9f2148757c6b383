"""The README's promises hold, block by block: CI runs its two commands and its lint line; every
``farm`` command it shows parses; its validate message is what validate says; its backends settings
are valid; and its nightly batch, pasted as is, runs through the commands it shows."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _commands():
    block = re.search(r"## Two commands.*?```sh\n(.*?)```", README, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, re.S | re.M)


def _section(heading: str) -> str:
    return README.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


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


def test_ci_runs_the_lint_line():
    (lint,) = [b.strip() for b in _blocks("sh") if "ruff check" in b]
    command = lint.split("#")[0].strip()
    assert command in (ROOT / ".ci" / "run").read_text()


def _farm_lines() -> list[str]:
    """Every ``farm ...`` command in the README's shell blocks and indented code, comments dropped."""
    text = "\n".join(_blocks("sh") + _blocks("bash"))
    text += "\n" + "\n".join(line[4:] for line in README.splitlines() if line.startswith("    farm "))
    lines = []
    for line in text.splitlines():
        for part in re.split(r"&&|;", line.split("  #")[0]):
            part = part.strip().removeprefix(".venv/bin/")
            if part.startswith("farm "):
                lines.append(part)
    return lines


def test_every_farm_command_in_the_readme_parses():
    """Each ``farm`` command the README shows names real commands and options (argparse exits on any
    unknown one)."""
    from farm.cli.app import build_parser

    lines = _farm_lines()
    assert len(lines) >= 12
    for line in lines:
        args = shlex.split(line.replace("<id>", "b-20261130-1"))[1:]
        try:
            build_parser().parse_args(args)
        except SystemExit as exc:  # pragma: no cover - the failure message
            raise AssertionError(f"the README's `{line}` does not parse") from exc


def test_the_validate_example_is_what_validate_says(tmp_path):
    """The README's validate message, made by the mistake it describes in the shipped example."""
    shown = re.search(r"^```\n(\S+\.yaml:\d+: .* is not a character .*)\n```", README, re.M).group(1)
    file = shown.split(":")[0]
    subprocess.run([sys.executable, "-m", "farm.cli", "examples", "examples"], cwd=tmp_path, check=True)
    path = tmp_path / file
    text = path.read_text()
    assert text.count('{speaker: mei, text: "It has my name') == 1
    path.write_text(text.replace('{speaker: mei, text: "It has my name', '{speaker: carl, text: "It has my name'))
    proc = subprocess.run(
        [sys.executable, "-m", "farm.cli", "validate", file], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [shown]


def test_the_model_backends_block_is_valid_settings():
    """The README's FARM_BACKENDS (and the default it sets) are settings the farm accepts."""
    from farm.settings import Settings

    (block,) = [b for b in _blocks("bash") if "FARM_BACKENDS=" in b]
    backends = json.loads(re.search(r"FARM_BACKENDS='(.*?)'", block, re.S).group(1))
    default = re.search(r"FARM_BACKEND_SCRIPT=(\S+)", block).group(1)
    settings = Settings.from_env({"FARM_BACKENDS": json.dumps(backends), "FARM_BACKEND_SCRIPT": default})
    catalog = settings.catalog()
    assert set(backends) <= set(catalog.configs)


def _nightly(tmp_path: Path) -> tuple[Path, str]:
    """The README's nightly.yaml, written where it says, beside the examples the first command writes;
    and the shell block that uses it."""
    section = _section("Nightly batches on a cluster")
    (spec,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    name = re.match(r"# (\S+)", spec).group(1)
    subprocess.run([sys.executable, "-m", "farm.cli", "examples", "examples"], cwd=tmp_path, check=True)
    (tmp_path / name).write_text(spec)
    (commands,) = [b for b in re.findall(r"```sh\n(.*?)```", section, re.S) if "batch submit" in b]
    assert name in commands
    return tmp_path / name, commands


def test_the_nightly_batch_pasted_as_is_is_valid(tmp_path):
    """Its deadline is in the future whenever it is pasted, and its globs take episodes, not the series
    files beside them."""
    from datetime import datetime, timezone

    from farm.loader import load_batch

    path, _ = _nightly(tmp_path)
    now = datetime.now(timezone.utc)
    loaded = load_batch(path, now)
    assert loaded.spec.deadline is not None and loaded.spec.deadline > now
    examples = ROOT / "farm" / "examples"
    shipped = sorted(p.relative_to(examples).as_posix() for p in examples.glob("*/ep*.yaml"))
    assert sorted(e.path.relative_to(tmp_path / "examples").as_posix() for e in loaded.episodes) == shipped
    assert isinstance(yaml.safe_load(path.read_text())["deadline"], str)  # the relative form, resolved on load


@pytest.mark.ray
def test_the_nightly_batch_runs_through_the_readme_commands(tmp_path):
    """The README's batch commands, run as written in a shell (with <id> the id submit printed), on the
    embedded script stage and the noop media backends (the commands are what is tested, not the
    media): the controller starts its own Ray head, the batch is delivered, and stop --ray stops it."""
    path, commands = _nightly(tmp_path)
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    script = []
    for line in commands.splitlines():
        line = line.split("  #")[0].strip()
        if line.startswith("farm batch submit"):
            line = f"id=$({line})"
        if line.startswith("farm report"):  # from another folder: the report asks the controller for its store
            line = f"(cd elsewhere && {line})"
        script.append(line.replace("<id>", '"$id"'))
    (tmp_path / "elsewhere").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "RAY_")) and k != "VIRTUAL_ENV"}
    env |= {
        "HOME": str(tmp_path / "home"),
        "FARM_STATE_DIR": str(tmp_path / "state"),
        "FARM_METRICS_PORT": "0",
        "FARM_NUM_CPUS": "2",
        "FARM_WEBHOOK_SECRET": "not-a-real-secret",
        **{f"FARM_BACKEND_{stage}": "noop" for stage in ("IMAGE", "VIDEO", "DUBBING", "ASSEMBLY")},
    }
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "3 delivered, 0 running, 0 failed of 3" in proc.stdout
    assert "Ray head at " in proc.stdout and " stopped" in proc.stdout
    assert not (tmp_path / "state" / "ray.json").exists()
    (report,) = (tmp_path / "elsewhere").glob("*.report.html")
    assert "midnight-tea/ep002" in report.read_text()
