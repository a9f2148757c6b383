"""The ``farm`` command as users run it: exit codes, messages, the JSON summary, the shipped examples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ffmpeg
import pytest
import yaml

from tests.conftest import write_specs


def farm(*args, env=None, cwd=None, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "farm.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )


def test_validate_ok_and_bad(tmp_path):
    """validate exits 0 on good specs and 2 with file:line: field: message on bad ones."""
    good = write_specs(tmp_path / "good")
    assert farm("validate", str(good)).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("series: series.yaml\nnumber: -1\ntitle: x\noutline: []\n")
    proc = farm("validate", str(bad))
    assert proc.returncode == 2
    assert f"{bad}:2: number:" in proc.stderr


def test_examples_are_written(tmp_path):
    """examples writes the English and Mandarin series with their episodes."""
    proc = farm("examples", str(tmp_path))
    assert proc.returncode == 0
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.yaml"))
    assert written == [
        "midnight-tea/ep001.yaml",
        "midnight-tea/ep002.yaml",
        "midnight-tea/series.yaml",
        "west-lake/ep001.yaml",
        "west-lake/series.yaml",
    ]
    assert yaml.safe_load((tmp_path / "west-lake/series.yaml").read_text(encoding="utf-8"))["language"] == "zh"


def test_missing_ffmpeg_is_one_clear_message(tmp_path):
    """Without ffmpeg on PATH, render stops before anything runs and says what to install."""
    episode = write_specs(tmp_path / "specs")
    empty = tmp_path / "bin"
    empty.mkdir()
    env = dict(os.environ, PATH=str(empty))
    proc = farm("render", str(episode), "--store", str(tmp_path / "store"), env=env)
    assert proc.returncode == 2
    assert "ffmpeg is not installed" in proc.stderr and "apt-get install ffmpeg" in proc.stderr
    assert not (tmp_path / "store").exists()


def test_bad_spec_renders_nothing(tmp_path):
    """A spec error stops render before Ray starts or the store is touched."""
    episode = write_specs(
        tmp_path / "specs",
        episode={
            "series": "series.yaml",
            "number": 1,
            "title": "x",
            "outline": [{"beat": "b", "lines": [{"speaker": "nobody", "text": "hi"}]}],
        },
    )
    proc = farm("render", str(episode), "--store", str(tmp_path / "store"))
    assert proc.returncode == 2 and "'nobody' is not a character" in proc.stderr
    assert not (tmp_path / "store").exists()


def test_s3_store_needs_an_endpoint(tmp_path):
    """An s3:// store without an endpoint is a clear settings error."""
    episode = write_specs(tmp_path / "specs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    proc = farm("render", str(episode), "--store", "s3://bucket/prefix", env=env)
    assert proc.returncode == 2 and "FARM_S3_ENDPOINT" in proc.stderr


@pytest.mark.ray
@pytest.mark.media
@pytest.mark.e2e
def test_render_json_summary(tmp_path):
    """render --json prints one JSON object with the deliverables and the accounting."""
    episode = write_specs(tmp_path / "specs")
    proc = farm("render", str(episode), "--store", str(tmp_path / "store"), "--json", "--num-cpus", "2")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    for key in (
        "video",
        "subtitles",
        "storyboard",
        "actions_run",
        "actions_cached",
        "wall_seconds",
        "cpu_seconds",
        "gpu_seconds",
        "tokens_in",
        "tokens_out",
    ):
        assert key in summary
    # 17 actions make the episode (2 of them lip-sync its shots with dialogue), and 12 judge them (3 keyframes,
    # 3 clips, 3 lines, 2 lip-syncs, the episode), all on take 1
    assert summary["actions_run"] == 29 and summary["actions_cached"] == 0
    assert summary["takes"]["judged"] == 11 and summary["takes"]["made"] == 11 and summary["flagged"] == []
    assert [s["shot"] for s in summary["lipsync"]] == ["s01-02", "s02-01"]
    for shot in summary["lipsync"]:  # each line's correlation, speaker and offset, measured and passed
        assert shot["checks"] and all(c["passed"] for c in shot["checks"])
    assert os.path.isfile(summary["video"]) and os.path.isfile(summary["storyboard"])


@pytest.mark.ray
@pytest.mark.media
@pytest.mark.e2e
def test_shipped_mandarin_example_at_full_size(tmp_path):
    """The shipped Mandarin example renders at 1080x1920 with one cue per line and the right length."""
    farm("examples", str(tmp_path / "ex"))
    episode = tmp_path / "ex" / "west-lake" / "ep001.yaml"
    proc = farm("render", str(episode), "--store", str(tmp_path / "store"), "--json", "--num-cpus", "2")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    info = ffmpeg.probe(summary["video"])
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    assert (video["width"], video["height"], video["codec_name"]) == (1080, 1920, "h264")
    assert {s["codec_name"] for s in info["streams"]} == {"h264", "aac", "mov_text"}
    outline = yaml.safe_load(episode.read_text(encoding="utf-8"))["outline"]
    lines = [l["text"] for beat in outline for l in beat["lines"]]
    srt = Path(summary["subtitles"]).read_text(encoding="utf-8").strip().split("\n\n")
    assert [b.split("\n", 2)[2] for b in srt] == lines
    assert abs(float(info["format"]["duration"]) - summary["duration_seconds"]) < 0.1
    assert 25 < summary["duration_seconds"] < 60
