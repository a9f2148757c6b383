"""Talking characters on real media: the speaker's mouth moves with the line, in time, and the sync judge
tells the right face from the wrong one (embedded keyframes, camera move, espeak-ng, lip-sync, judges)."""

from __future__ import annotations

import copy

import pytest

from farm.settings import Settings
from farm.store import ArtifactStore, open_objects
from tests.conftest import SMALL_SCRIPT, write_specs
from tests.test_takes import _render

pytestmark = [pytest.mark.media, pytest.mark.e2e]


def _two_in_frame():
    """One medium shot of Ana and Bo, pushing in, in which Ana speaks."""
    script = copy.deepcopy(SMALL_SCRIPT)
    shot = {
        "id": "s01-01",
        "description": "Ana and Bo at the table",
        "characters": ["ana", "bo"],
        "framing": "medium",
        "camera": "push_in",
        "duration": 2.0,
        "lines": [{"speaker": "ana", "text": "Did you hear the bell ring twice tonight?"}],
    }
    script["scenes"] = [{"id": "s01", "location": "kitchen", "shots": [shot]}]
    return {"series": "series.yaml", "number": 1, "title": "Talk", "target_seconds": 30, "script": script}


def test_the_speaker_talks_in_time_and_swapping_the_speaker_fails_the_judge(tmp_path):
    settings = Settings(store=str(tmp_path / "store"))
    result = _render(write_specs(tmp_path / "specs", episode=_two_in_frame()), settings)
    (shot,) = result.summary()["lipsync"]
    checks = {c["name"]: c for c in shot["checks"]}
    assert checks["sync:0"]["passed"] and checks["sync:0"]["value"] >= 0.5
    assert checks["speaker:0"]["passed"] and checks["offset:0"]["value"] == 0
    # the same clip judged as if Bo had spoken the line: his mouth did not move with it
    from workers.judge.sync import BACKEND as SYNC

    lip = next(m for m in result.ran if m.op == "lipsync")
    judge = next(m for m in result.ran if m.label == "judge sync lipsync s01-01")
    store = ArtifactStore(open_objects(settings.store_spec()), settings.studio)
    work = tmp_path / "swap"
    work.mkdir()
    inputs = {"subject": store.get_blob(lip.outputs["clip"], work / "clip.mp4")}
    state = _lipsync_params(settings, result.batch)
    for line in state["lines"]:
        inputs[line["input"]] = store.get_blob(
            _line_blob(settings, result.batch, line["input"]), work / f"{line['input']}.wav"
        )
    swapped = copy.deepcopy(state)
    swapped["lines"][0]["speaker"] = "bo"
    target = {"op": "lipsync", "stage": "lipsync", "backend": "mouth", "take": 1}
    out = work / "out"
    out.mkdir()
    verdict = SYNC.run("judge", inputs, {"target": target, "thresholds": {}, "expect": swapped}, out)
    failed = {c["name"] for c in verdict.meta["checks"] if not c["passed"]}
    assert verdict.meta["verdict"] == "fail" and {"speaker:0", "sync:0"} <= failed, verdict.meta
    assert judge.meta["verdict"] == "pass"


def _controller(settings, batch):
    from farm.observe.review import replay
    from farm.store.journal import StoreJournal, render_prefix

    journal = StoreJournal(
        open_objects(settings.store_spec()), render_prefix(settings.studio, "test-series", "ep001", batch)
    )
    controller, _ = replay(settings, [journal], lambda e: False)
    return controller


def _lipsync_params(settings, batch):
    controller = _controller(settings, batch)
    action = next(s.action for s in controller.actions.values() if s.action.op == "lipsync")
    return {k: v for k, v in action.params.items() if k != "take"}


def _line_blob(settings, batch, name):
    controller = _controller(settings, batch)
    action = next(s.action for s in controller.actions.values() if s.action.op == "lipsync")
    return controller.actions[action.inputs[name].key].manifest.outputs["audio"]
