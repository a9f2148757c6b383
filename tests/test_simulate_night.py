"""farm simulate --night: GPUs that hold models. The simulated runtime carries placements out (a load
holds the GPU before the work; evictions; a seat waits for a load under way) and accounts each GPU's
time; the baseline placers keep to their definitions; a small night played under every policy; the
command's JSON. Exact where the scenario allows; no timings."""

from __future__ import annotations

import argparse
import json

import pytest

from farm.cli.simulate import add_parser
from farm.core.ports import ManualClock
from farm.errors import UsageError
from farm.policy.residency import Gpu, Model, Placement, Want
from farm.simulate.baselines import fifo, per_task, static, static_partition
from farm.simulate.fleet import GpuKind, apportion, expected_gpu_work, fleet_for, models_of
from farm.simulate.gpus import NightRuntime, PlacementError
from farm.simulate.night import NIGHT_POLICIES, NIGHT_STUDIOS, night_batch, night_shares, simulate_night
from farm.simulate.result import lower_bound
from farm.simulate.runtime import true_seconds

KINDS = [GpuKind("H100", 2, 80.0), GpuKind("L4", 2, 24.0)]
WAN, HUNYUAN, TTS, FLUX = "video/wan-i2v", "video/hunyuan-i2v", "dubbing/tts", "image/flux"


@pytest.fixture(scope="module")
def tiny():
    """Eight episodes, a series each: a handful of every kind of action, clips on both video models."""
    return night_batch(8, seed=3, gpus=4, per_series=1)


@pytest.fixture(scope="module")
def small():
    """60 episodes on 24 GPUs under every policy (played once for the module)."""
    work = night_batch(60, seed=1, gpus=24)
    kinds = fleet_for(work, 24)
    return work, kinds, {p: simulate_night(work, kinds, 8, p, night_shares()) for p in NIGHT_POLICIES}


def _actions(work, op, backend=None):
    return [a for a in work.graph().actions.values() if a.op == op and (backend is None or a.backend == backend)]


def _runtime(work, kinds=KINDS):
    clock = ManualClock(0.0)
    return NightRuntime(work, clock, kinds, cpus=4), clock


def _submit(runtime, work, action, placement):
    profile = work.profiles()[(action.stage, action.backend)]
    runtime.submit(action, {}, profile, "b", placement)


def _drain(runtime):
    done = []
    while runtime.running:
        done += runtime.wait()
    return done


# -- the simulated runtime ---------------------------------------------------------------------
def test_a_load_holds_the_gpu_before_the_work_and_a_resident_model_is_not_loaded_again(tiny):
    clip, other = _actions(tiny, "clip", "wan-i2v")[:2]
    runtime, clock = _runtime(tiny)
    _submit(runtime, tiny, clip, Placement(clip.key, "H100-000", WAN, load=True))
    assert runtime.slots()[0].resident == (WAN,) and runtime.slots()[0].running == {WAN: 1}
    assert runtime.capacity().gpus_by_accelerator == {"H100": 1.0, "L4": 2.0}
    [first] = _drain(runtime)
    took = true_seconds(tiny, clip)
    assert clock.now() == pytest.approx(120.0 + took)  # the 120 s load, then the clip's own time
    reported = first.manifest
    assert reported.started_at == 0.0 and reported.finished_at == pytest.approx(120.0 + took)
    assert reported.usage.load_seconds == 120.0 and reported.usage.gpu_seconds == pytest.approx(took)  # loads: no spend
    _submit(runtime, tiny, other, Placement(other.key, "H100-000", WAN))  # resident: no load
    _drain(runtime)
    one, two = runtime.runs
    assert (one.gpu, one.load_s, one.work_s) == ("H100-000", 120.0, pytest.approx(took))
    assert (two.load_s, two.start) == (0.0, pytest.approx(120.0 + took))
    accounts = runtime.accounts()
    span = runtime.last_end
    assert accounts["H100-000"] == {
        "work": pytest.approx(took + true_seconds(tiny, other)),
        "load": 120.0,
        "idle": pytest.approx(0.0),
        "loads": 1.0,
        "releases": 0.0,
    }
    assert accounts["L4-001"] == {"work": 0.0, "load": 0.0, "idle": span, "loads": 0.0, "releases": 0.0}
    assert sum(a["work"] + a["load"] + a["idle"] for a in accounts.values()) == pytest.approx(4 * span)


def test_a_second_seat_waits_for_the_load_under_way_and_the_wait_is_idle(tiny):
    one, two = _actions(tiny, "line")[:2]
    runtime, _ = _runtime(tiny)
    _submit(runtime, tiny, one, Placement(one.key, "L4-000", TTS, load=True))
    _submit(runtime, tiny, two, Placement(two.key, "L4-000", TTS))  # the second of two seats
    assert runtime.capacity().gpus_by_accelerator["L4"] == 1.0
    reported = {f.action.key: f.manifest for f in _drain(runtime)}
    assert reported[two.key].started_at == 20.0 and reported[two.key].usage.load_seconds == 0.0
    runs = {r.key: r for r in runtime.runs}
    assert runs[one.key].load_s == 20.0 and runs[two.key].wait_s == 20.0 and runs[two.key].load_s == 0.0
    a = runtime.accounts()["L4-000"]
    assert a["load"] == pytest.approx(0.5 * 20.0)  # a seat's load holds half the GPU
    assert a["work"] == pytest.approx(0.5 * (true_seconds(tiny, one) + true_seconds(tiny, two)))
    assert a["work"] + a["load"] + a["idle"] == pytest.approx(runtime.last_end)


def test_placements_the_gpus_cannot_carry_are_refused_with_their_reason(tiny):
    clip = _actions(tiny, "clip", "wan-i2v")[0]
    hunyuan = _actions(tiny, "clip", "hunyuan-i2v")[0]
    line = _actions(tiny, "line")[0]
    runtime, _ = _runtime(tiny)
    with pytest.raises(PlacementError, match="a L4, but video/wan-i2v runs on H100"):
        _submit(runtime, tiny, clip, Placement(clip.key, "L4-000", WAN, load=True))
    with pytest.raises(PlacementError, match="does not load video/wan-i2v, which that GPU does not hold"):
        _submit(runtime, tiny, clip, Placement(clip.key, "H100-000", WAN))
    _submit(runtime, tiny, clip, Placement(clip.key, "H100-000", WAN, load=True))
    with pytest.raises(PlacementError, match="evicts video/wan-i2v, which is at work there"):
        _submit(runtime, tiny, hunyuan, Placement(hunyuan.key, "H100-000", HUNYUAN, True, (WAN,)))
    with pytest.raises(PlacementError, match="loads video/hunyuan-i2v while another model is at work there"):
        _submit(runtime, tiny, hunyuan, Placement(hunyuan.key, "H100-000", HUNYUAN, load=True))
    with pytest.raises(PlacementError, match="no such GPU"):
        _submit(runtime, tiny, line, Placement(line.key, "T4-000", TTS, load=True))
    _drain(runtime)
    with pytest.raises(PlacementError, match=r"video/wan-i2v, video/hunyuan-i2v need 130 GB, the GPU has 80 GB"):
        _submit(runtime, tiny, hunyuan, Placement(hunyuan.key, "H100-000", HUNYUAN, load=True))
    _submit(runtime, tiny, hunyuan, Placement(hunyuan.key, "H100-000", HUNYUAN, True, (WAN,)))  # idle now: fine
    assert runtime.slots()[0].resident == (HUNYUAN,)


def test_slots_say_how_long_a_gpu_has_been_idle_and_a_released_gpu_holds_nothing(tiny):
    clip = _actions(tiny, "clip", "wan-i2v")[0]
    runtime, clock = _runtime(tiny)
    clock.set(50.0)
    assert [g.idle_s for g in runtime.slots()] == [50.0] * 4
    _submit(runtime, tiny, clip, Placement(clip.key, "H100-000", WAN, load=True))
    assert runtime.slots()[0].idle_s == 0.0
    with pytest.raises(PlacementError, match="release of H100-000: video/wan-i2v is at work there"):
        runtime.release(["H100-000"])
    _drain(runtime)
    ended = clock.now()
    clock.set(ended + 700.0)
    assert runtime.slots()[0].idle_s == pytest.approx(700.0) and runtime.slots()[0].resident == (WAN,)
    runtime.release(["H100-000"])
    assert runtime.slots()[0].resident == () and runtime.accounts()["H100-000"]["releases"] == 1.0


def test_an_action_without_placement_goes_where_ray_would_put_it(tiny):
    """No placement (a caller that places nothing): a free GPU holding its model, else any free one, loading."""
    a, b = _actions(tiny, "clip", "wan-i2v")[:2]
    runtime, _ = _runtime(tiny)
    _submit(runtime, tiny, a, None)
    _drain(runtime)
    [first] = runtime.runs
    assert first.load_s == 120.0 and first.gpu.startswith("H100")
    _submit(runtime, tiny, b, None)
    _drain(runtime)
    assert runtime.runs[1].gpu == first.gpu and runtime.runs[1].load_s == 0.0


# -- the baseline placers ------------------------------------------------------------------------
MODELS = {
    WAN: Model(WAN, 120.0, 70.0),
    HUNYUAN: Model(HUNYUAN, 90.0, 60.0),
    TTS: Model(TTS, 20.0, 6.0, seats=2),
}


def test_fifo_reuses_a_free_gpu_holding_the_model_else_loads_on_any_free_one_and_never_waits():
    gpus = [Gpu("g0", "H100", 80.0, (HUNYUAN,)), Gpu("g1", "H100", 80.0, (WAN,)), Gpu("g2", "H100", 80.0)]
    r = fifo([Want("a", WAN, "H100", 60.0)], gpus, MODELS)
    assert r.placed == [Placement("a", "g1", WAN)]
    busy = [Gpu("g0", "H100", 80.0, (HUNYUAN,)), Gpu("g1", "H100", 80.0, (WAN,), {WAN: 1})]
    r = fifo([Want("a", WAN, "H100", 60.0), Want("b", WAN, "H100", 60.0)], busy, MODELS)
    assert r.placed == [Placement("a", "g0", WAN, True, (HUNYUAN,))] and r.deferred == ["b"]
    # nothing passed in is changed
    assert busy[0].resident == (HUNYUAN,) and busy[1].running == {WAN: 1}


def test_per_task_loads_for_every_action_even_where_its_model_is():
    gpus = [Gpu("g0", "H100", 80.0, (WAN,)), Gpu("g1", "H100", 80.0, (WAN,))]
    r = per_task([Want("a", WAN, "H100"), Want("b", WAN, "H100"), Want("c", WAN, "H100")], gpus, MODELS)
    assert [(p.load, p.evict) for p in r.placed] == [(True, (WAN,)), (True, (WAN,))] and r.deferred == ["c"]


def test_static_runs_a_model_only_on_its_own_gpus_and_loads_each_once():
    gpus = [Gpu("g0", "H100", 80.0), Gpu("g1", "H100", 80.0), Gpu("g2", "H100", 80.0, (HUNYUAN,))]
    place = static({"g0": WAN, "g1": WAN, "g2": HUNYUAN})
    r = place([Want(k, WAN, "H100") for k in "abc"] + [Want("d", HUNYUAN, "H100")], gpus, MODELS)
    assert [(p.key, p.gpu, p.load) for p in r.placed] == [("a", "g0", True), ("b", "g1", True), ("d", "g2", False)]
    assert r.deferred == ["c"]  # g2 is free but not its model's
    with pytest.raises(ValueError, match="model dubbing/tts owns no GPU in the partition"):
        place([Want("e", TTS, "L4")], gpus, MODELS)


def test_static_partition_follows_the_expected_work(tiny):
    kinds = [GpuKind("H100", 10, 80.0), GpuKind("L4", 6, 24.0)]
    partition = static_partition(tiny, kinds)
    work = expected_gpu_work(tiny)
    assert len(partition) == 16 and set(partition.values()) == set(work)
    h100 = [m for g, m in partition.items() if g.startswith("H100")]
    assert set(h100) == {WAN, HUNYUAN}
    assert h100.count(WAN) == apportion(10, {WAN: work[WAN], HUNYUAN: work[HUNYUAN]}, least=1)[WAN]
    with pytest.raises(ValueError, match="2 L4 GPUs cannot give one to each of 3 models"):
        static_partition(tiny, [GpuKind("H100", 4, 80.0), GpuKind("L4", 2, 24.0)])


# -- the night -----------------------------------------------------------------------------------
def test_night_batch_is_four_studios_five_models_and_two_video_models_by_series():
    work = night_batch(100, seed=2, gpus=32)
    assert {b: len(v.episodes) for b, v in work.batches.items()} == {"north": 40, "east": 20, "south": 20, "west": 20}
    models = models_of(work)
    assert set(models) == {WAN, HUNYUAN, TTS, FLUX, "lipsync/latentsync"}
    assert all(20.0 <= m.load_s <= 120.0 for m in models.values()) and models[TTS].seats == 2
    clips = {a.context.get("series", a.key): a.backend for a in _actions(work, "clip")}
    assert {"wan-i2v", "hunyuan-i2v"} <= set(clips.values())
    assert work.batches["east"].deadline is not None and work.batches["north"].deadline is None
    assert night_batch(100, seed=2, gpus=32).graph().actions.keys() == work.graph().actions.keys()
    with pytest.raises(ValueError, match="episodes must be >= the number of studios"):
        night_batch(3, seed=1, gpus=8)


def test_the_night_accounts_every_gpu_second_and_nothing_beats_the_bound(small):
    work, kinds, results = small
    gpus = sum(k.count for k in kinds)
    truth = sum(
        true_seconds(work, a) * work.profiles()[(a.stage, a.backend)].gpus for a in work.graph().actions.values()
    )
    old = lower_bound(work, {k.name: float(k.count) for k in kinds}, 8)
    for policy, r in results.items():
        assert r.sim.episodes_done == 60, policy
        g = r.gpu_seconds()
        assert g["work"] + g["load"] + g["idle"] == pytest.approx(gpus * r.makespan_s), policy
        assert g["work"] == pytest.approx(truth), policy  # every action's own time, once (no failures)
        assert min(a["idle"] for a in r.accounts.values()) >= -1e-6, policy
        assert r.makespan_s >= r.bound.seconds >= old, policy


def test_the_baselines_keep_to_their_definitions_in_a_whole_night(small):
    work, kinds, results = small
    gpu_runs = [x for x in results["per-task"].sim.runs if x.gpus > 0]
    assert results["per-task"].loads == len(gpu_runs) and all(x.load_s > 0 for x in gpu_runs)
    partition = static_partition(work, kinds)
    loaded = [x for x in results["static"].sim.runs if x.load_s > 0]
    assert all(partition[x.gpu] == f"{x.stage}/{_backend(work, x.key)}" for x in loaded)
    assert results["static"].loads <= len(partition) and all(
        a["loads"] <= 1 for a in results["static"].accounts.values()
    )


def _backend(work, key):
    return work.graph().actions[key].backend


def test_farm_keeps_models_where_their_work_is_and_beats_load_on_demand(small):
    _, _, results = small
    farm, fifo_night, per_task_night = results["farm"], results["fifo"], results["per-task"]
    assert farm.gpu_seconds()["load"] < fifo_night.gpu_seconds()["load"] / 2
    assert farm.loads < fifo_night.loads < per_task_night.loads
    assert farm.useful_gpu_share > fifo_night.useful_gpu_share
    assert farm.useful_gpu_share > per_task_night.useful_gpu_share + 0.2
    assert farm.deadline_misses == 0 and all(d["allowed"] for d in farm.deadlines.values())
    assert farm.studio_share_error < fifo_night.studio_share_error


# -- the command -------------------------------------------------------------------------------
def _command(*argv):
    parser = argparse.ArgumentParser(prog="farm")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["simulate", *argv])
    return args.func(args)


def test_command_night_bench_json_is_one_object_with_every_policy(capsys):
    assert _command("--night", "--bench", "--episodes", "8", "--gpus", "8", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["policies"]) == {"farm", "fifo", "per-task", "static"}
    for policy, r in out["policies"].items():
        for field in ("makespan_s", "lower_bound_s", "ratio", "useful_gpu_share", "loads", "deadline_misses"):
            assert field in r, (policy, field)
        assert set(r["gpu_seconds"]) == {"work", "load", "idle"} and 0 <= r["studio_share_error"] <= 1
        assert r["makespan_s"] >= r["lower_bound_s"] > 0
    assert sum(out["gpus"].values()) == 8 and set(out["gpus"]) == {"H100", "L4"}


def test_command_night_text_and_its_errors(capsys):
    assert _command("--night", "--episodes", "8", "--gpus", "8", "--policy", "static") == 0
    text = capsys.readouterr().out
    assert "farm simulate --night: 8 episodes" in text and "static" in text and "lower bound" in text
    with pytest.raises(UsageError, match="--policy sequential is not a night policy"):
        _command("--night", "--policy", "sequential")
    with pytest.raises(UsageError, match="add --night"):
        _command("--policy", "per-task")
    with pytest.raises(UsageError, match="a night has its own studios"):
        _command("--night", "--studios", "a,b")
    with pytest.raises(UsageError, match="at least one GPU of each of"):
        _command("--night", "--gpus", "1", "--episodes", str(len(NIGHT_STUDIOS)))
