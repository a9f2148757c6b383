"""Ctrl-C during ``farm render``: one line, exit 130, what finished is kept, and the rerun resumes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import wait_until, write_specs

pytestmark = [pytest.mark.ray]


def test_ctrl_c_stops_with_one_line_and_the_rerun_resumes(tmp_path):
    """SIGINT to the render's whole process group (what a terminal's Ctrl-C sends) while clips are
    being made: the render says how many actions it keeps and exits 130, with no traceback; run again,
    it reuses them and finishes."""
    episode = write_specs(tmp_path / "specs")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "RAY_ADDRESS"))} | {
        "FARM_STORE": str(tmp_path / "store"),
        "FARM_BACKEND_IMAGE": "noop",
        "FARM_BACKEND_DUBBING": "noop",
        "FARM_BACKEND_ASSEMBLY": "noop",
        "FARM_BACKEND_VIDEO": "sleepy",
        "FARM_BACKENDS": json.dumps({"sleepy": {"kind": "tests.support.fake_backends:Sleepy", "seconds": 3}}),
        "FARM_NUM_CPUS": "2",
        "PYTHONPATH": os.getcwd(),
    }
    command = [sys.executable, "-m", "farm.cli", "render", str(episode)]
    err = tmp_path / "stderr.txt"
    with err.open("w") as stderr:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, start_new_session=True
        )
        try:
            wait_until(
                lambda: re.search(r"  [1-9]\d*/\d+ actions .*video 0/", err.read_text()),
                timeout=120,
                what="the first actions to finish, before the clips",
            )
            started = time.monotonic()
            os.killpg(proc.pid, signal.SIGINT)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert time.monotonic() - started < 30
    text = err.read_text()
    assert proc.returncode == 130, text[-3000:]
    assert "Traceback" not in text and "*** SIG" not in text and "stack trace" not in text.lower()
    last = text.strip().splitlines()[-1]
    assert last.startswith("farm: interrupted; ") and last.endswith(" actions finished are kept; run again to resume")
    kept = int(last.split("; ")[1].split()[0])
    assert kept > 0

    rerun = subprocess.run(command + ["--json"], capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout)
    assert summary["actions_cached"] >= kept
    assert summary["actions_run"] + summary["actions_cached"] > kept
