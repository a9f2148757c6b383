"""Which Ray cluster the ``farm`` command joins: only the one it was given or the one it started (and
recorded), never another that runs on the machine; a wrong address or a missing token is one line
within seconds; ``farm controller start`` works without the venv on PATH and ``stop --ray`` stops
what it started."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farm.runtime.cluster import _pids_of, _signal_all
from tests.conftest import write_specs

FARM = str(Path(sys.executable).with_name("farm"))


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A newcomer's shell: PATH without the venv, the farm's state and store in tmp_path."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "FARM_")) and k != "VIRTUAL_ENV"}
    env |= {"PATH": path, "FARM_STATE_DIR": str(tmp_path / "state"), "FARM_STORE": str(tmp_path / "store")}
    return env | extra


def _farm(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([FARM, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=env["HOME"])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the socket is


def test_a_wrong_address_fails_in_seconds_with_one_line(tmp_path):
    env = _env(tmp_path, HOME=str(tmp_path))
    started = time.monotonic()
    proc = _farm(env, "batch", "list", "--address", f"127.0.0.1:{_closed_port()}")
    assert time.monotonic() - started < 10
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "no Ray cluster answers at 127.0.0.1:" in proc.stderr
    episode = write_specs(tmp_path / "specs")
    started = time.monotonic()
    render = _farm(env, "render", str(episode), "--address", f"127.0.0.1:{_closed_port()}")
    assert time.monotonic() - started < 10
    assert render.returncode == 1 and "no Ray cluster answers at 127.0.0.1:" in render.stderr.splitlines()[-1]
    assert "Traceback" not in render.stderr
    bad = _farm(env, "batch", "list", "--address", "http://127.0.0.1:8265")
    assert bad.returncode == 2 and "is not a Ray address" in bad.stderr and bad.stderr.count("\n") == 1


def test_nothing_started_and_nothing_given_joins_nothing(tmp_path):
    """With no cluster given and none started by the farm, batch commands refuse, even with
    RAY_ADDRESS set (Ray's own variable, which would join whatever cluster it names)."""
    env = _env(tmp_path, HOME=str(tmp_path), RAY_ADDRESS=f"127.0.0.1:{_closed_port()}")
    started = time.monotonic()
    proc = _farm(env, "batch", "list")
    assert time.monotonic() - started < 10
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "no farm cluster to talk to: start one on this machine with `farm controller start`" in proc.stderr


@pytest.mark.ray
def test_controller_start_records_its_head_and_only_it_is_joined(tmp_path):
    """``farm controller start`` with the venv off PATH starts a head with token auth and records it;
    batch commands join that one and say so, even while another cluster runs and RAY_ADDRESS names it;
    without the token an explicit address is refused with the fix; ``stop --ray`` stops every process
    of the head it started."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    env = _env(tmp_path, HOME=str(home), FARM_METRICS_PORT="0")
    foreign_tmp = Path("/tmp") / f"other-farm-{os.getpid()}"
    foreign = subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--port=0", f"--temp-dir={foreign_tmp}"]
        + ["--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats"],
        capture_output=True,
        text=True,
        env=env | {"RAY_AUTH_MODE": "disabled"},
        timeout=120,
    )
    assert foreign.returncode == 0, foreign.stderr[-2000:]
    try:
        foreign_address = (foreign_tmp / "ray_current_cluster").read_text().strip()
        env["RAY_ADDRESS"] = foreign_address
        start = _farm(env, "controller", "start", "--num-cpus", "1", "--json", timeout=180)
        assert start.returncode == 0, start.stderr
        record = json.loads((tmp_path / "state" / "ray.json").read_text())
        assert record["address"] != foreign_address and record["auth"] == "token"
        assert f"farm: Ray at {record['address']} (a local head started now" in start.stderr
        assert json.loads(start.stdout)["store"] == str(tmp_path / "store")
        assert (home / ".ray" / "auth_token").is_file()  # Ray's token, made by Ray's own command

        listed = _farm(env, "batch", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout) == []
        assert f"farm: Ray at {record['address']} (the local head `farm controller start` started" in listed.stderr

        no_token = _farm(env | {"HOME": str(tmp_path)}, "batch", "list", "--address", record["address"])
        assert no_token.returncode == 1 and no_token.stderr.count("\n") == 1
        assert "requires an auth token" in no_token.stderr and "RAY_AUTH_TOKEN" in no_token.stderr
        wrong = _farm(env | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "x" * 32}, "batch", "list")
        assert wrong.returncode == 1 and "refused the auth token from RAY_AUTH_TOKEN" in wrong.stderr
    finally:
        stop = _farm(env, "controller", "stop", "--ray", timeout=120)
        _signal_all(str(foreign_tmp), signal.SIGKILL)  # the other cluster, stopped as the farm stops its own
    assert stop.returncode == 0, stop.stderr
    assert "controller stopped" in stop.stdout and f"Ray head at {record['address']} stopped" in stop.stdout
    assert not (tmp_path / "state" / "ray.json").exists()
    assert _pids_of(record["temp_dir"]) == []
    after = _farm(env, "batch", "list")
    assert after.returncode == 1 and "no farm cluster to talk to" in after.stderr
