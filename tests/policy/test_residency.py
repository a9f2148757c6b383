"""Model residency (farm/policy/residency.py): a GPU keeps its model while its model has work, swaps only
when the swap pays for itself (or the work is urgent, or its model would starve), and places alike every time."""

from __future__ import annotations

from farm.policy.residency import AGE_FACTOR, Gpu, Model, Want, place

MODELS = {
    "video/wan": Model("video/wan", load_s=120.0, memory_gb=60.0),
    "image/sdxl": Model("image/sdxl", load_s=30.0, memory_gb=12.0),
    "dubbing/tts": Model("dubbing/tts", load_s=20.0, memory_gb=4.0, seats=2),
}


def gpus(*held, accelerator="H100", memory=80.0):
    return [
        Gpu(f"g{i}", accelerator, memory, tuple(h) if isinstance(h, tuple) else ((h,) if h else ()))
        for i, h in enumerate(held)
    ]


def wants(model, n, seconds=60.0, **kw):
    return [Want(f"{model}-{i}", model, seconds=seconds, **kw) for i in range(n)]


def test_work_goes_to_the_gpu_that_holds_its_model_without_a_load():
    r = place(wants("image/sdxl", 1), gpus("video/wan", "image/sdxl"), MODELS)
    assert [(p.gpu, p.load) for p in r.placed] == [("g1", False)]


def test_a_bare_gpu_loads_before_anything_is_evicted():
    r = place(wants("image/sdxl", 1), gpus("video/wan", None), MODELS)
    assert [(p.gpu, p.load, p.evict) for p in r.placed] == [("g1", True, ())]


def test_an_idle_gpu_swaps_only_when_the_queue_pays_for_the_load():
    """One 60 s clip does not pay for a 120 s load on a GPU whose image model still has work: it waits.
    (64 GB GPUs: the video model does not fit beside the image model.)"""
    held = gpus("image/sdxl", "image/sdxl", memory=64.0)
    small = place(wants("video/wan", 1), held, MODELS, queued={"image/sdxl": 600.0})
    assert small.placed == [] and small.deferred == ["video/wan-0"]
    # ten clips (600 s) on one GPU pay for its 120 s load, and the image model keeps a GPU for its own work
    big = place(wants("video/wan", 10), held, MODELS, queued={"image/sdxl": 100.0})
    loads = [p for p in big.placed if p.load]
    assert len(loads) == 1 and loads[0].evict == ("image/sdxl",)
    assert len(big.placed) == 1 and len(big.deferred) == 9  # one seat: the rest wait for that GPU


def test_the_last_gpu_of_a_model_with_work_is_not_taken_unless_forced():
    held = gpus("image/sdxl", memory=64.0)
    r = place(wants("video/wan", 10), held, MODELS, queued={"image/sdxl": 600.0})
    assert r.placed == []
    urgent = place([Want("u", "video/wan", seconds=60.0, urgent=True)], held, MODELS, queued={"image/sdxl": 600.0})
    assert [(p.gpu, p.load, p.evict) for p in urgent.placed] == [("g0", True, ("image/sdxl",))]


def test_a_model_without_a_gpu_is_not_starved():
    held = gpus("image/sdxl", memory=14.0)  # no room beside it
    waited = AGE_FACTOR * MODELS["dubbing/tts"].load_s
    young = place([Want("a", "dubbing/tts", seconds=5.0, waited_s=waited - 1)], held, MODELS, {"image/sdxl": 900.0})
    old = place([Want("a", "dubbing/tts", seconds=5.0, waited_s=waited)], held, MODELS, {"image/sdxl": 900.0})
    assert young.placed == [] and [p.load for p in old.placed] == [True]


def test_two_small_models_share_a_gpu_with_room_and_take_turns_at_it():
    held = gpus("image/sdxl")  # 12 of 80 GB held, idle
    r = place(wants("dubbing/tts", 3, seconds=5.0), held, MODELS)
    assert [(p.gpu, p.load, p.evict) for p in r.placed] == [("g0", True, ()), ("g0", False, ())]
    assert r.deferred == ["dubbing/tts-2"]  # two seats on that GPU
    # while the speech model works there, the image model that shares its memory waits its turn
    assert place(wants("dubbing/tts", 2, seconds=5.0) + wants("image/sdxl", 1), held, MODELS).deferred == [
        "image/sdxl-0"
    ]


def test_a_busy_gpu_is_never_swapped_and_kinds_are_kept():
    busy = gpus("image/sdxl")
    busy[0].running["image/sdxl"] = 1
    assert place(wants("video/wan", 20), busy, MODELS).placed == []
    mixed = gpus(None, accelerator="L4") + [Gpu("h", "H100", 80.0)]
    r = place([Want("w", "video/wan", accelerator="H100", seconds=60.0)], mixed, MODELS)
    assert [p.gpu for p in r.placed] == ["h"]


def test_the_same_inputs_place_the_same_way_and_nothing_passed_in_changes():
    held = gpus("image/sdxl", None, "video/wan")
    ws = wants("video/wan", 3) + wants("image/sdxl", 2)
    first, second = place(ws, held, MODELS), place(ws, held, MODELS)
    assert first == second
    assert [g.resident for g in held] == [("image/sdxl",), (), ("video/wan",)] and all(not g.running for g in held)
