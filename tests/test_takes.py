"""Takes and judges through the one engine: a judged take that fails is made again as the next take,
the first that passes is used, every take is paid once and cached, a person's reject re-renders
exactly its shot's path, a strict batch fails a flagged episode until a person approves it, a budget
declines takes it would not pay for, and each backend's yield scales what its actions are expected
to cost.

Renders here run the real engine, store and planner on the noop backends, in this process
(``InProcessRuntime``), judged by the noop judge, which fails takes before ``pass_from_take``:
the media judges have tests of their own (tests/workers/test_judge_*.py).
"""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from farm.core.controller import Controller
from farm.core.events import BatchSubmitted, Submission
from farm.errors import SpecError
from farm.loader import load_episode
from farm.runtime.local import InProcessRuntime
from farm.service.local import render_episode
from farm.settings import Settings, preflight
from tests.conftest import SMALL_SCRIPT, SMALL_SERIES, controller_services, wait_until, write_specs
from tests.test_controller import BACKENDS, PROFILES, Harness, estimator

NOOP = {f"backend_{s}": "noop" for s in ("image", "video", "dubbing", "assembly")}
SHOTS = ("s01-01", "s01-02", "s02-01")
ADMIN = "admin-token-for-takes-0123456789"


def _series(pass_from_take: int, **more):
    judge = {"name": "noop", "thresholds": {"pass_from_take": pass_from_take}}
    return dict(SMALL_SERIES, judges={"clip": [judge], "line": ["noop"]}, **more)


def _render(path, settings):
    runtime = InProcessRuntime(settings.store_spec(), settings.catalog(), cpus=2)
    try:
        return render_episode(load_episode(path), settings, runtime)
    finally:
        runtime.shutdown()


@pytest.fixture
def settings(tmp_path):
    return Settings(store=str(tmp_path / "store"), **NOOP)


def test_a_clip_failing_twice_is_made_three_times_and_the_third_is_used(tmp_path, settings):
    """Each clip fails takes 1 and 2 and passes take 3: three takes, each judged and paid once; take 3
    feeds the mux; a rerun runs nothing; the store keeps the backend's yield, 1/3."""
    path = write_specs(tmp_path / "specs", series=_series(3))
    result = _render(path, settings)
    labels = sorted(m.label for m in result.ran)
    for shot in SHOTS:
        assert f"clip {shot}" in labels and f"clip {shot} take 2" in labels and f"clip {shot} take 3" in labels
        assert f"clip {shot} take 4" not in labels
        assert [f"judge noop clip {shot}" + t for t in ("", " take 2", " take 3")] == [
            x for x in labels if x.startswith(f"judge noop clip {shot}")
        ]
    clips = [t for t in result.takes if t["label"].startswith("clip ")]
    assert len(clips) == 3 and all(t["used"] == 3 for t in clips)
    assert all([x["verdict"] for x in t["takes"]] == ["fail", "fail", "pass"] for t in clips)
    assert result.flagged == []
    summary = result.summary()["takes"]
    assert summary["made"] == 3 * 3 + 3  # 3 clips x 3 takes, 3 lines x 1
    again = _render(path, settings)
    assert again.ran == [] and len(again.cached) == len(result.ran)
    kept = json.loads((tmp_path / "store" / "_farm" / "yields.json").read_text())
    assert kept["noop/clip"] == [3, 9]  # the rerun's cached verdicts are no new takes


def test_when_every_take_fails_the_best_is_used_and_the_shot_is_flagged(tmp_path, settings):
    path = write_specs(tmp_path / "specs", series=_series(5, takes={"max": 2}))
    result = _render(path, settings)  # delivered: a render is not strict
    assert result.video.exists()
    assert len(result.flagged) == 3
    assert "clip s01-01: every take failed (2 of 2); take 2 is used (score 0.20" in result.flagged[0]
    assert all(t["used"] == 2 for t in result.takes if t["label"].startswith("clip "))


def test_a_reject_re_renders_exactly_its_shots_path(tmp_path, settings, monkeypatch, capsys):
    """`farm review reject EP SHOT` records a reject of the clip take in use; the next render makes
    that shot's next take, its judge, its mux and the episode's assembly, and nothing else."""
    from farm.cli import main

    path = write_specs(tmp_path / "specs", series=_series(1))
    _render(path, settings)
    monkeypatch.setenv("FARM_STORE", settings.store)
    for name, value in NOOP.items():
        monkeypatch.setenv(f"FARM_{name.upper()}", value)
    assert main(["review", "reject", str(path), "s09-09", "--reason", "x"]) != 0
    assert "its shots are: s01-01, s01-02, s02-01" in capsys.readouterr().err
    assert main(["review", "reject", str(path), "s01-02"]) != 0  # a reject says why
    assert "needs --reason" in capsys.readouterr().err
    assert main(["review", "reject", str(path), "s01-02", "--reason", "her face melts"]) == 0
    assert "rejected test-series/ep001 shot s01-02" in capsys.readouterr().out
    result = _render(path, settings)
    assert sorted(m.label for m in result.ran) == [
        "clip s01-02 take 2",
        "episode ep001",
        "judge noop clip s01-02 take 2",
        "mux s01-02",
    ]
    capsys.readouterr()
    assert main(["review", str(path), "--json"]) == 0
    view = json.loads(capsys.readouterr().out)["episodes"][0]
    shot = next(s for s in view["shots"] if s["shot"] == "s01-02")
    clip = next(j for j in shot["judged"] if j["op"] == "clip")
    assert [(t["take"], t["review"], t["used"]) for t in clip["takes"]] == [(1, "reject", False), (2, None, True)]
    assert clip["takes"][0]["reason"] == "her face melts"
    assert any(name.endswith("verdict") for name in clip["takes"][1]["evidence"])


def _batch_payload(tmp_path, strict: bool):
    from farm.loader import load_batch

    folder = tmp_path / "specs"
    write_specs(folder, series=_series(5, takes={"max": 1}))
    (folder / "batch.yaml").write_text(
        yaml.safe_dump({"studio": "default", "episodes": ["ep001.yaml"], "strict": strict})
    )
    from datetime import datetime, timezone

    return load_batch(folder / "batch.yaml", datetime.now(timezone.utc))


def test_a_strict_batch_fails_a_flagged_episode_until_a_person_approves(tmp_path, settings):
    from farm.service.host import batch_payload

    loaded = _batch_payload(tmp_path, strict=True)
    with controller_services(settings, ADMIN, cpus=2) as start:
        service = start(loop=True)
        first = service.submit(batch_payload(loaded, settings), token=ADMIN)
        wait_until(lambda: service.status(first, token=ADMIN)["status"] != "running", timeout=60)
        status = service.status(first, token=ADMIN)
        assert status["episodes"]["failed"] == 1 and status["held_for_review"] == 1
        assert "the batch is strict and clip s01-01: every take failed (1 of 1)" in status["failures"][0]["reason"]
        with pytest.raises(Exception, match="its shots are"):
            service.review(first, "test-series/ep001", "nope", "approve", token=ADMIN)
        for shot in SHOTS:
            service.review(first, "test-series/ep001", shot, "approve", "good enough", token=ADMIN)
        events = [e["type"] for e in service.events(first, token=ADMIN)]
        assert events.count("review.recorded") == 3
        second = service.submit(batch_payload(loaded, settings), token=ADMIN)
        wait_until(lambda: service.status(second, token=ADMIN)["status"] != "running", timeout=60)
        status = service.status(second, token=ADMIN)
        assert status["episodes"]["delivered"] == 1 and status["held_for_review"] == 0, status


# -- the pure core: budgets and yields ----------------------------------------------------------------
class JudgedHarness(Harness):
    """The controller harness with clips judged by a judge that fails takes before ``pass_from``."""

    def __init__(self, pass_from: int, **kw):
        super().__init__(**kw)
        self.pass_from = pass_from

    def finish(self, key):
        action = self.c.actions[key].action
        if action.op == "judge":
            passed = action.params["target"]["take"] >= self.pass_from
            meta = {"verdict": "pass" if passed else "fail", "score": 0.1 * action.params["target"]["take"]}
            meta["checks"] = [{"name": "take", "passed": passed, "value": 1.0, "threshold": 1.0, "detail": ""}]
            self.changes[key] = {"meta": meta}
        super().finish(key)

    def submit_judged(self, takes=3, **terms):
        judging = {"judges": {"clip": [["judge-x", "1", {}]]}, "takes": takes}
        series = SMALL_SERIES
        data = {
            "studio": "acme",
            "namespace": "acme",
            "backends": BACKENDS,
            "episodes": [
                {
                    "series": series,
                    "episode": {"series": "s.yaml", "number": 1, "title": "E1", "script": copy.deepcopy(SMALL_SCRIPT)},
                    "judging": judging,
                }
            ],
        } | terms
        self.commit([BatchSubmitted(batch="b1", data=Submission.model_validate(data))])


def test_a_budget_declines_takes_it_would_not_pay_for(tmp_path):
    """Clips cost 1 GPU-second each (estimated) and fail until take 3; a cap of 5.5 GPU-seconds pays
    for the three first takes and some second ones: the rest are declined (journaled, with the cap),
    their shots use their best take, and the episode is delivered within the cap."""
    h = JudgedHarness(pass_from=3)
    h.submit_judged(budget={"gpu_seconds": 5.5})
    h.run()
    declined = [e for e in h.log if e.type == "take.declined"]
    assert declined and all("the budget would not pay for it (gpu_seconds:" in e.data.reason for e in declined)
    status = h.c.batch_status("b1", h.now)
    assert status["episodes"]["delivered"] == 1
    assert status["held_for_review"] == 1 and any("budget" in r for r in status["review"][0]["shots"])
    assert status["spent"]["gpu_seconds"] <= 5.5 + 1.5  # the cap plus at most one action's overrun


def test_expected_takes_scale_a_judged_actions_estimate_by_its_yield():
    """A backend passing half its takes is budgeted at twice its cost (at most the takes left)."""
    h = JudgedHarness(pass_from=1, controller=Controller(estimator, PROFILES))
    h.c.yields.load({("ffmpeg-motion", "clip"): (5, 10)})
    h.submit_judged(takes=3)
    h.run()
    clips = [s.action for s in h.c.actions.values() if s.action.op == "clip"]
    assert clips and all(h.c._estimate(a) == (2.0, 0, 2.0) for a in clips)
    lines = [s.action for s in h.c.actions.values() if s.action.op == "line"]
    assert all(h.c._estimate(a) == (1.0, 0, 0.0) for a in lines)  # not judged here: one take


@pytest.mark.parametrize(
    "judges,field,message",
    [
        ({"clip": ["nosuch"]}, "judges.clip[0]", "no judge backend named 'nosuch'"),
        ({"line": ["frames"]}, "judges.line[0]", "judges keyframe, clip, not line"),
        (
            {"clip": [{"name": "noop", "thresholds": {"pass_from_take": 20}}]},
            "judges.clip[0].thresholds.pass_from_take",
            "from 1 to 10",
        ),
        (
            {"clip": [{"name": "noop", "thresholds": {"speed": 1}}]},
            "judges.clip[0].thresholds.speed",
            "no threshold 'speed'",
        ),
    ],
)
def test_bad_judges_are_refused_before_anything_runs(tmp_path, judges, field, message):
    path = write_specs(tmp_path / "specs", series=dict(SMALL_SERIES, judges=judges))
    from farm.loader import field_line

    with pytest.raises(SpecError) as err:
        preflight(Settings(store=str(tmp_path / "store")), [load_episode(path)], line_of=field_line)
    problem = err.value.problems[0]
    assert problem.file.endswith("series.yaml") and problem.field == field and message in problem.message
    lines = (tmp_path / "specs" / "series.yaml").read_text().splitlines()
    at = lines[problem.line - 1] if problem.line else ""
    assert at.strip().startswith(("- nosuch", "- frames", "pass_from_take:", "speed:")), at


def test_takes_max_below_one_is_refused_with_its_field(tmp_path):
    from farm.errors import SpecError as Refused

    path = write_specs(tmp_path / "specs", series=dict(SMALL_SERIES, takes={"max": 0}))
    with pytest.raises(Refused, match=r"takes\.max"):
        load_episode(path)


# -- the real judges on real media -------------------------------------------------------------------
@pytest.mark.media
@pytest.mark.e2e
def test_a_black_take_then_a_recoloured_take_then_a_good_take(tmp_path):
    """A video backend that renders a black clip on take 1 and its characters in the wrong colours on
    take 2 (tests/support/defect_video.py), judged by the embedded judges on real media: every clip goes
    through exactly three takes, each failing on its own check, and the third is used; all three are
    paid and their evidence kept; a rerun runs nothing; the backend's yield is 1/3."""
    defects = {"defects": {"kind": "tests.support.defect_video:DefectVideo", "stage": "video"}}
    settings = Settings(store=str(tmp_path / "store"), backends=defects, backend_video="defects")
    path = write_specs(tmp_path / "specs")
    result = _render(path, settings)
    clips = {t["label"]: t for t in result.takes if t["label"].startswith("clip ")}
    assert sorted(clips) == [f"clip {s}" for s in SHOTS]
    for clip in clips.values():
        assert clip["used"] == 3 and [t["verdict"] for t in clip["takes"]] == ["fail", "fail", "pass"]
        first, second = (t["failing"] for t in clip["takes"][:2])
        assert any(f.startswith("black_frames:") for f in first)
        assert any(f.startswith("character:") for f in second) and not any(f.startswith("black") for f in second)
    ran = sorted(m.label for m in result.ran if m.op == "clip")
    assert ran == sorted(f"clip {s}{t}" for s in SHOTS for t in ("", " take 2", " take 3"))
    assert result.flagged == []
    from farm.store import ArtifactStore, open_objects

    store = ArtifactStore(open_objects(settings.store_spec()), settings.studio)
    judges = [m for m in result.ran if m.stage == "judge" and m.label.startswith("judge frames clip")]
    assert len(judges) == 9 and all(store.has_blob(m.outputs["evidence"].digest) for m in judges)
    again = _render(path, settings)
    assert again.ran == []
    kept = json.loads((tmp_path / "store" / "_farm" / "yields.json").read_text())
    assert kept["defects/clip"] == [3, 9]
