"""The ready queue: lanes, lazy removal, demand per studio, walks that leave it unchanged."""

from farm.policy import ReadyQueue, Task


def t(key, studio="s", gpus=1.0, backend="i2v"):
    return Task(key, "b", studio, "e", "video", backend, cpus=0.0, gpus=gpus)


def test_walk_merges_lanes_in_order_and_refuse_skips_a_lane():
    q = ReadyQueue()
    for key, order, backend in [("a", 1, "i2v"), ("b", 2, "tts"), ("c", 3, "i2v"), ("d", 4, "tts")]:
        q.push(t(key, backend=backend), (order, key))
    assert [x.key for x in q.walk()] == ["a", "b", "c", "d"]
    walk, seen = q.walk(), []
    for task in walk:
        seen.append(task.key)
        if task.key == "a":
            walk.refuse()  # the rest of the i2v lane ("c") is skipped
    assert seen == ["a", "b", "d"]
    assert [x.key for x in q.walk()] == ["a", "b", "c", "d"]  # unchanged


def test_discard_replace_and_demand():
    q = ReadyQueue()
    q.push(t("a", "s1", 1.0), (1, "a"))
    q.push(t("b", "s1", 0.5), (2, "b"))
    q.push(t("c", "s2", 1.0), (3, "c"))
    assert q.gpu_demand() == {"s1": 1.5, "s2": 1.0}
    assert q.discard("a") and not q.discard("a")
    q.push(t("c", "s2", 1.0), (0, "c"))  # re-pushed with a new order
    assert len(q) == 2 and "a" not in q
    assert [x.key for x in q.walk()] == ["c", "b"]
    q.discard("c")
    assert q.gpu_demand() == {"s1": 0.5}
