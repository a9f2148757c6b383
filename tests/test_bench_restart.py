"""``farm bench restart`` on a tiny night: a restart after compaction replays less than before, every
batch keeps its status, and group commit writes fewer segments than one per engine commit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from farm.bench.restart import bench_restart


def test_bench_restart_measures_both_restarts_in_one_run():
    """The report has both restarts of the same night, and compaction keeps every batch's status."""
    report = bench_restart(episodes=12, batches=3)
    assert report["statuses_equal"] is True
    assert report["running_batches"] == ["night-002"]
    assert report["compaction"]["archived"] == 2
    assert report["events_after"] < report["events_before"]
    assert 0 < report["segments"] < report["segments_without_group_commit"]
    assert "restart after compaction" in report["text"]


def test_the_command_prints_one_json_object(tmp_path):
    """``farm bench restart --json`` runs from the command line and prints the figures as JSON."""
    out = subprocess.run(
        [sys.executable, "-m", "farm.cli", "bench", "restart", "--episodes", "6", "--batches", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["episodes"] == 6 and report["restart_after_s"] >= 0 and "text" not in report


@pytest.mark.s3
def test_bench_restart_reads_the_journal_from_s3(s3_server):
    """With an S3 store the restarts read the journal copied there, and give the same statuses."""
    from farm.store.s3 import S3Store

    store = S3Store(
        s3_server.endpoint,
        s3_server.access_key,
        s3_server.secret_key,
        "farm-bench",
        "restart",
        secure=s3_server.secure,
        region=s3_server.region,
    )
    report = bench_restart(episodes=6, batches=2, store=store, group_s=5.0)
    assert report["store"] == "s3" and report["statuses_equal"] is True and report["objects_copied"] > 0
