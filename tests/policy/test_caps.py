"""Concurrency caps per backend."""

from farm.policy import Task, cap_admits

SCRIPT = Task("k", "b", "s", "e", "script", "llm-api", cpus=0.25)


def test_cap_reached_refuses():
    assert cap_admits({"llm-api": 2}, {"llm-api": 1}, SCRIPT)
    assert not cap_admits({"llm-api": 2}, {"llm-api": 2}, SCRIPT)


def test_uncapped_backend_and_no_caps():
    assert cap_admits({"tts": 1}, {"llm-api": 99}, SCRIPT)
    assert cap_admits(None, {}, SCRIPT)
