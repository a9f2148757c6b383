"""Structured logs: JSON off a terminal, readable on one; an action's every line carries its context;
credentials never appear, neither in the driver's output nor in Ray's worker logs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from farm.core.plan import STAGES, BackendChoice, EpisodeJob, plan_episode
from farm.core.spec import Episode, Series
from farm.observe import logs
from farm.settings import StoreSpec
from tests.conftest import SMALL_SCRIPT, SMALL_SERIES, wait_until, write_specs

CONTEXT = ("batch", "episode", "stage", "action")
ACCESS, SECRET = "AKIAFARMTEST0000EXAMPLE", "s3cr3t/Farm+Key=never-to-be-printed"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(autouse=True)
def _reset_logging():
    yield
    logs.configure()


def test_json_lines_when_not_a_terminal():
    """Off a terminal every line is one JSON object with the event, level and timestamp."""
    out = io.StringIO()
    logs.configure(level="INFO", stream=out)
    structlog.get_logger().info("action.started", stage="video", episode="ep001")
    line = json.loads(out.getvalue())
    assert line["event"] == "action.started" and line["level"] == "info" and line["stage"] == "video"
    assert "timestamp" in line


def test_readable_on_a_terminal():
    """On a terminal a line is for people: event first, then key=value."""
    out = _Terminal()
    logs.configure(level="INFO", stream=out)
    structlog.get_logger().info("action.finished", stage="video", seconds=1.5)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())
    assert "action.finished" in text and "stage=video" in text and "seconds=1.5" in text and not text.startswith("{")


def test_secrets_are_masked_by_key_and_by_value():
    """Secret-named keys are masked; registered secrets are masked inside any value, nested or in a traceback."""
    out = io.StringIO()
    logs.configure(level="DEBUG", stream=out, secrets=[ACCESS, SECRET])
    log = structlog.get_logger()
    log.info("store.opened", s3_secret_key="anything", password="hunter22", tokens_in=12)
    log.info("request", url=f"https://{ACCESS}:{SECRET}@s3.example/bucket", headers={"x": [f"Bearer {SECRET}"]})
    try:
        raise RuntimeError(f"S3 said no to {ACCESS} / {SECRET}")
    except RuntimeError:
        log.exception("store.failed", spec=StoreSpec(url="s3://b/p", access_key=ACCESS, secret_key=SECRET))
    text = out.getvalue()
    assert ACCESS not in text and SECRET not in text and "hunter22" not in text and "anything" not in text
    assert text.count(logs.MASK) >= 6 and '"tokens_in": 12' in text and "RuntimeError" in text
    assert logs.mask(f"failed: {SECRET}") == f"failed: {logs.MASK}"


def _noop_job(script=SMALL_SCRIPT, outline=None):
    series = Series.model_validate(SMALL_SERIES)
    body = {"series": "s.yaml", "number": 1, "title": "E"} | ({"outline": outline} if outline else {"script": script})
    return EpisodeJob(
        "acme", "acme", series, Episode.model_validate(body), {s: BackendChoice("noop", "1") for s in STAGES}
    )


def test_every_line_of_an_action_carries_its_context(tmp_path):
    """execute() logs start and finish, or the failure, each with batch, episode, stage and action key."""
    from farm.errors import ActionFailed
    from farm.runtime.execute import execute

    spec = StoreSpec(url=str(tmp_path / "store"), access_key=ACCESS, secret_key=SECRET)
    sheet = plan_episode(_noop_job(), None, {}).actions[0]
    script = plan_episode(
        _noop_job(outline=[{"beat": "b", "lines": [{"speaker": "ana", "text": "Hi."}]}]), None, {}
    ).actions[0]
    assert script.op == "script"  # the noop backend cannot write scripts: this one fails
    logs.configure(level="DEBUG")
    with capture_logs() as captured:
        execute(sheet.to_json(), {}, spec, "acme", batch="acme-20260101-000000-0a1b2c3d")
        with pytest.raises(ActionFailed):
            execute(script.to_json(), {}, spec, "acme", batch="acme-20260101-000000-0a1b2c3d")
    assert [c["event"] for c in captured] == ["action.started", "action.finished", "action.started", "action.failed"]
    for line in captured:
        assert all(line.get(k) for k in CONTEXT), line
        assert line["batch"] == "acme-20260101-000000-0a1b2c3d" and line["episode"] == "ep001"
    assert {c["action"] for c in captured} == {sheet.key[:12], script.key[:12]}


def _json_lines(text: str) -> list[dict]:
    """JSON log lines, also those Ray forwards from workers ("(pid=1) {...} [repeated 2x ...]")."""
    out = []
    for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines():
        start, end = line.find("{"), line.rfind("}")
        if start >= 0:
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line[start : end + 1]))
    return out


@pytest.mark.ray
def test_controller_and_worker_lines_carry_the_batch(tmp_path, ray_local, capfd):
    """A batch through the controller: its lines and its workers' lines about an action carry batch,
    episode, stage and action key."""
    from farm.bench.batch import synthetic_payload, tiny_episode
    from farm.service.host import ControllerService
    from farm.settings import Settings

    settings = Settings(
        store=str(tmp_path / "store"), metrics_port=0, log_level="INFO", **{f"backend_{s}": "noop" for s in STAGES}
    )
    service = ControllerService(settings.model_dump(mode="json"))
    try:
        payload = synthetic_payload(2, {s: ["noop", "1"] for s in STAGES}, studio="acme", make=tiny_episode)
        batch = service.submit({k: v for k, v in payload.items() if k != "backends"})
        wait_until(lambda: service.status(batch)["status"] != "running", what=f"batch {batch} to finish")
        lines: list[dict] = []
        for _ in range(50):  # Ray forwards worker output asynchronously
            captured = capfd.readouterr()
            lines += _json_lines(captured.out + captured.err)
            if {"action.started", "action.finished"} <= {line["event"] for line in lines}:
                break
            time.sleep(0.2)
    finally:
        service.stop()
        service.runtime.shutdown()
    actions = [line for line in lines if line["event"].startswith("action.")]
    events = {line["event"] for line in actions}
    assert {"action.dispatched", "action.completed", "action.started", "action.finished"} <= events, events
    for line in actions:
        assert all(line.get(k) for k in CONTEXT), line
        assert line["batch"] == batch
    delivered = [line for line in lines if line["event"] == "episode.delivered"]
    assert len(delivered) == 2 and all(line["batch"] == batch and line["episode"] for line in delivered)


@pytest.mark.s3
@pytest.mark.ray
@pytest.mark.media
@pytest.mark.e2e
def test_render_on_s3_never_logs_credentials(tmp_path, s3_server):
    """`farm -vv render` on an S3 store, and again with a wrong secret key: neither the keys nor the wrong
    secret appear in the command's output or in any of Ray's log files (driver and workers)."""
    episode = write_specs(tmp_path / "specs")
    ray_tmp = Path(tempfile.mkdtemp(prefix="fr-", dir="/tmp"))  # short: Ray's socket paths must fit
    wrong = "Wr0ng-S3cret-That-Must-Not-Leak-42"
    base = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")} | {
        "RAY_TMPDIR": str(ray_tmp),
        "FARM_STORE": "s3://farm-logs/run",
        "FARM_S3_ENDPOINT": s3_server.endpoint,
        "FARM_S3_ACCESS_KEY": s3_server.access_key,
        "FARM_S3_SECURE": str(s3_server.secure).lower(),
        "FARM_S3_REGION": s3_server.region,
        "FARM_STUDIO": "acme",
    }
    try:
        outputs = []
        for secret, ok in ((s3_server.secret_key, True), (wrong, False)):
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "farm.cli",
                    "-vv",
                    "render",
                    str(episode),
                    "--num-cpus",
                    "2",
                    "--out",
                    str(tmp_path / "out"),
                    "--quiet",
                ],
                env=base | {"FARM_S3_SECRET_KEY": secret},
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert (proc.returncode == 0) == ok, proc.stderr[-3000:]
            outputs.append(proc.stdout + proc.stderr)
        assert '"event": "action.finished"' in outputs[0]  # the workers' JSON lines reached the driver
        assert (
            "SignatureDoesNotMatch" in outputs[1] or "AccessDenied" in outputs[1] or "InvalidAccessKeyId" in outputs[1]
        )
        files = [p for p in ray_tmp.rglob("*") if p.is_file() and not p.is_symlink()]
        worker_logs = [p for p in files if re.match(r"(worker|python-core-worker)-", p.name)]
        assert worker_logs, "no Ray worker logs to search"
        texts = outputs + [p.read_bytes().decode("utf-8", "replace") for p in files if p.stat().st_size < 50_000_000]
        for secret in (s3_server.access_key, s3_server.secret_key, wrong):
            leaks = [t[max(0, t.find(secret) - 200) : t.find(secret) + 50] for t in texts if secret in t]
            assert not leaks, f"{secret!r} appears in logs: {leaks[:2]}"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
