"""What a newcomer meets first: store URLs that are not stores, settings errors, `farm examples` run
twice, CPU-seconds of in-process backends, `farm ... | head`, file modes in the store, report names,
`--version`, help for every option and `farm validate --json`."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from farm.core.manifest import Manifest
from farm.settings import Settings, StoreSpec
from tests.conftest import SMALL_SERIES, write_specs
from workers.api import Estimate, Resources, StageResult, Usage, children_cpu
from workers.image.pillow import BACKEND as PILLOW

KEY_SHEET, KEY_KEYFRAME, KEY_SCRIPT, KEY_CHILD = (f"{n:064x}" for n in (1, 2, 3, 4))


def farm(*args, env=None, cwd=None, timeout=300, stdout=subprocess.PIPE):
    return subprocess.run(
        [sys.executable, "-m", "farm.cli", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])  # `-m farm.cli` from any folder
    return env


# -- 1. a store setting that looks like a URL but is not s3://BUCKET -----------------------------------
@pytest.mark.parametrize(
    ("store", "fix"),
    [
        ("s3:/bucket", "use s3://bucket"),
        ("http://host:9000/b", "use s3://b with FARM_S3_ENDPOINT=host:9000 FARM_S3_SECURE=false, or a directory"),
        ("https://key:pass@minio.example/b/p", "use s3://b/p with FARM_S3_ENDPOINT=minio.example, or a directory"),
        ("minio://bucket", "use s3://BUCKET/PREFIX (with FARM_S3_ENDPOINT=host:port), or a directory"),
        ("s3://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
        ("S3://bucket/p", "use s3://bucket/p"),
        ("scratch:", "a directory named so: ./scratch:"),
    ],
)
def test_a_store_that_is_not_a_store_is_refused_in_one_line(tmp_path, store, fix):
    """`farm render --store X` for a mistyped URL exits 2 with one line naming the setting, the option
    and the fix, never a pydantic dump, and makes no folder named after the URL."""
    episode = write_specs(tmp_path / "specs")
    proc = farm("render", str(episode), "--store", store, "--quiet", cwd=tmp_path, env=_clean_env())
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"farm: FARM_STORE (--store): {store.replace('key:pass@', '')!r} ")
    assert fix in lines[0]
    assert "pydantic" not in proc.stderr and "For further information" not in proc.stderr
    assert "pass" not in lines[0]  # a password in the URL is never echoed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["specs"]


def test_the_store_setting_from_the_environment_is_checked_too():
    """FARM_STORE is validated the same way; a directory, ./NAME and s3://bucket[/prefix] pass."""
    with pytest.raises(ValueError, match="is not a store: use s3://b"):
        Settings.from_env({"FARM_STORE": "s3:/b"})
    for ok in ("./farm-store", "/srv/farm", "./s3:/odd-but-asked-for", "s3://b", "s3://b/some/prefix", "rel/dir"):
        assert Settings.from_env({"FARM_STORE": ok}).store == ok


def test_settings_errors_are_one_line_each(tmp_path):
    """Several bad settings: one line each, `FARM_<NAME> (--option): message`, no pydantic links."""
    env = _clean_env() | {"FARM_NUM_CPUS": "many", "FARM_METRICS_PORT": "99999", "FARM_STORE": "http://h:9000/b"}
    proc = farm("backends", "--no-check", env=env, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("farm: FARM_STORE (--store): 'http://h:9000/b' is not a store: use s3://b")
    assert lines[1].startswith("FARM_NUM_CPUS (--num-cpus): Input should be a valid integer")
    assert lines[2] == "FARM_METRICS_PORT: Input should be less than or equal to 65535"
    assert len(lines) == 3 and "errors.pydantic.dev" not in proc.stderr and "For further information" not in proc.stderr


# -- 2. `farm examples DIR` keeps what the user changed ---------------------------------------------
def test_examples_twice_keeps_an_edited_file_and_force_restores_it(tmp_path):
    """A rerun writes only what is missing, leaves identical files alone and keeps an edited one
    (saying so on stderr, exit 0); --force writes the shipped file over it."""
    first = farm("examples", str(tmp_path / "ex"))
    assert first.returncode == 0 and len(first.stdout.splitlines()) == 5
    edited = tmp_path / "ex" / "midnight-tea" / "ep001.yaml"
    shipped = edited.read_bytes()
    edited.write_text("# my own episode\n", encoding="utf-8")
    (tmp_path / "ex" / "west-lake" / "series.yaml").unlink()
    untouched = tmp_path / "ex" / "midnight-tea" / "series.yaml"
    os.utime(untouched, (0, 0))

    again = farm("examples", str(tmp_path / "ex"))
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [str(tmp_path / "ex" / "west-lake" / "series.yaml")]  # only the missing one
    assert edited.read_text(encoding="utf-8") == "# my own episode\n"
    assert again.stderr.strip() == f"kept {edited}: it differs from the shipped example; --force overwrites it"
    assert untouched.stat().st_mtime == 0  # identical: not rewritten

    forced = farm("examples", str(tmp_path / "ex"), "--force")
    assert forced.returncode == 0 and forced.stdout.splitlines() == [str(edited)] and forced.stderr == ""
    assert edited.read_bytes() == shipped


# -- 3. CPU-seconds of in-process backends --------------------------------------------------------
def _action(key: str, stage: str, op: str, backend: str, params: Mapping[str, Any], inputs=()) -> dict[str, Any]:
    return {
        "key": key,
        "stage": stage,
        "op": op,
        "backend": backend,
        "version": {"pillow": PILLOW.version}.get(backend, "1"),  # the backend's version: its actions' keys name it
        "params": params,
        "label": f"{op} {key[-1]}",
        "inputs": {name: [f"{9:064x}", name] for name in inputs},
        "context": {"studio": "acme"},
    }


STYLE = {"description": "flat", "palette": ["#102030", "#405060", "#f0a040"]}
ANA = {"id": "ana", "name": "Ana", "look": {"description": "red coat", "outfit": "#c03030", "hair": None, "skin": None}}


def test_pillow_and_outline_actions_record_their_cpu_seconds(tmp_path):
    """A Pillow sheet and keyframe and the outline script, run through execute() as a worker runs
    them, record the CPU they used (they report none themselves)."""
    from farm.core.plan import BackendChoice, EpisodeJob, script_params
    from farm.core.spec import Episode, Series
    from farm.runtime.execute import execute

    spec = StoreSpec(url=str(tmp_path / "store"))
    sheet = Manifest.model_validate(
        execute(
            _action(KEY_SHEET, "image", "sheet", "pillow", {"style": STYLE, "character": ANA, "seed": 0}),
            {},
            spec,
            "acme",
        )
    )
    params = {
        "style": STYLE,
        "width": 360,
        "height": 640,
        "seed": [1, "s01-01"],
        "location": "kitchen",
        "time_of_day": "night",
        "description": "Ana at the window.",
        "framing": "medium",
        "characters": ["ana"],
    }
    figure = sheet.outputs["figure"].model_dump()
    keyframe = Manifest.model_validate(
        execute(
            _action(KEY_KEYFRAME, "image", "keyframe", "pillow", params, ["sheet:ana"]),
            {"sheet:ana": figure},
            spec,
            "acme",
        )
    )
    outline = [{"beat": "a knock", "lines": [{"speaker": "ana", "text": "Who's there?"}]}] * 20
    episode = Episode.model_validate({"series": "s.yaml", "number": 1, "title": "T", "outline": outline})
    job = EpisodeJob(
        "acme", "acme", Series.model_validate(SMALL_SERIES), episode, {"script": BackendChoice("outline", "1")}
    )
    script = Manifest.model_validate(
        execute(_action(KEY_SCRIPT, "script", "script", "outline", script_params(job)), {}, spec, "acme")
    )
    for manifest in (sheet, keyframe, script):
        assert manifest.usage.cpu_seconds > 0, manifest.label
        assert manifest.usage.cpu_seconds <= manifest.seconds + 0.05  # one thread: never more than wall time
    assert sheet.usage.model == "pillow" and script.usage.model == "outline"


class ChildCPU:
    """A backend that burns CPU in a child program and reports it, as the ffmpeg backends do."""

    stage, kind = "image", "tests.test_newcomer_cli:ChildCPU"
    ops = ("keyframe",)
    features: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    resources = Resources(num_cpus=1)
    version = "1"

    def __init__(self, name: str, config: Mapping[str, Any]):
        self.name = name

    def estimate(self, op, params) -> Estimate:
        return Estimate(seconds=1.0)

    def run(self, op, inputs, params, out_dir) -> StageResult:
        cpu0 = children_cpu()
        burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass"
        subprocess.run([sys.executable, "-c", burn], check=True)
        path = Path(out_dir) / "keyframe.txt"
        path.write_text("done")
        return StageResult(files={"keyframe": path}, usage=Usage(cpu_seconds=children_cpu() - cpu0))


def test_a_backend_that_measures_its_children_is_not_counted_twice(tmp_path):
    """A backend reporting its child program's CPU keeps about that figure: the larger of what it
    reported and what execute() measured, never their sum."""
    from farm.runtime.execute import execute

    configs = {"child": {"kind": ChildCPU.kind}}
    manifest = Manifest.model_validate(
        execute(
            _action(KEY_CHILD, "image", "keyframe", "child", {}),
            {},
            StoreSpec(url=str(tmp_path)),
            "acme",
            None,
            configs,
        )
    )
    assert 0.4 <= manifest.usage.cpu_seconds < 0.7


def test_charge_cpu_keeps_the_larger_figure():
    from farm.runtime.execute import _charge_cpu

    for reported, measured, kept in ((0.0, 0.25, 0.25), (3.0, 0.25, 3.0), (float("nan"), 0.25, 0.25)):
        result = StageResult(files={}, usage=Usage(cpu_seconds=reported, model="m"))
        _charge_cpu(result, measured)
        assert result.usage.cpu_seconds == kept and result.usage.model == "m"


# -- 4. `farm ... | head` -------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["validate", "{spec}"], ["validate", "--json", "{spec}"], ["--version"], ["--help"]])
def test_a_closed_stdout_is_no_traceback(tmp_path, args):
    """stdout's reader is gone before the command prints (`farm ... | head` once head has exited): no
    traceback, exit 141 (what a shell reports for a tool killed by SIGPIPE), for a command's output and
    for argparse's (--version, --help) alike."""
    spec = write_specs(tmp_path / "specs")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout buffered, as users run it
    read, write = os.pipe()
    os.close(read)
    try:
        proc = farm(*(a.format(spec=spec) for a in args), stdout=write, env=env)
    finally:
        os.close(write)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""


# -- 5. file modes in the store ---------------------------------------------------------------------
def test_store_files_get_the_umask_mode(tmp_path):
    """A put file is 0644 under umask 022 (mkstemp's 0600 before), its new folders 0755."""
    from farm.store import LocalStore

    old = os.umask(0o022)
    try:
        store = LocalStore(tmp_path / "store")
        store.put_bytes("episodes/s/ep001/episode.mp4", b"mp4")
        src = tmp_path / "src.bin"
        src.write_bytes(b"x")
        store.put_file("blobs/ab/cd", src)
    finally:
        os.umask(old)
    assert (tmp_path / "store/episodes/s/ep001/episode.mp4").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "store/blobs/ab/cd").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "store/episodes/s").stat().st_mode & 0o777 == 0o755
    assert not list((tmp_path / "store").rglob(".tmp-*"))


# -- 6. report names --------------------------------------------------------------------------------
def test_episode_report_is_named_by_series_and_episode(tmp_path, monkeypatch, capsys):
    """`farm report EPISODE.yaml` writes ./<series>-<episode>.report.html: two series' ep001 reports
    do not overwrite each other."""
    from farm.cli.app import main
    from farm.core.plan import STAGES
    from farm.loader import load_episode
    from farm.runtime.local import InProcessRuntime
    from farm.service.local import render_episode

    store = tmp_path / "store"
    settings = Settings(store=str(store), studio="acme", **{f"backend_{s}": "noop" for s in STAGES})
    episodes = []
    for series_id in ("first-series", "second-series"):
        episode = write_specs(tmp_path / series_id, series=SMALL_SERIES | {"id": series_id})
        runtime = InProcessRuntime(settings.store_spec(), settings.catalog(), cpus=2)
        try:
            render_episode(load_episode(episode), settings, runtime)
        finally:
            runtime.shutdown()
        episodes.append(episode)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()  # the renders' output
    for episode in episodes:
        assert main(["report", str(episode), "--store", str(store), "--studio", "acme"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == ["first-series-ep001.report.html", "second-series-ep001.report.html"]
    assert all((tmp_path / name).is_file() for name in printed) and not (tmp_path / "ep001.report.html").exists()


# -- 7. --version, help everywhere, validate --json ---------------------------------------------------
def test_version():
    from importlib import metadata

    proc = farm("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"farm {metadata.version('farm')}"


def test_every_option_and_command_has_help():
    """Every argument of every command (and every command) says what it is for in --help."""
    from farm.cli.app import build_parser

    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                helps = {choice.dest: choice.help for choice in action._choices_actions}
                for name, sub in action.choices.items():
                    if not helps.get(name):
                        missing.append(f"{path} {name}")
                    walk(sub, f"{path} {name}")
            elif not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "farm")
    assert missing == []


def test_validate_json(tmp_path):
    """validate --json: {"files": N, "problems": [{file, line, field, message}]}; exit 0 or 2 as before."""
    good = write_specs(tmp_path / "good")
    ok = farm("validate", "--json", str(good), str(good.parent / "series.yaml"))
    assert ok.returncode == 0 and json.loads(ok.stdout) == {"files": 2, "problems": []}
    bad = tmp_path / "bad.yaml"
    bad.write_text("series: series.yaml\nnumber: -1\ntitle: x\noutline: []\n")
    proc = farm("validate", "--json", str(good), str(bad))
    assert proc.returncode == 2
    report = json.loads(proc.stdout)
    assert report["files"] == 2 and report["problems"]
    assert set(report["problems"][0]) == {"file", "line", "field", "message"}
    assert {"file": str(bad), "line": 2, "field": "number"}.items() <= next(
        p for p in report["problems"] if p["field"] == "number"
    ).items()
