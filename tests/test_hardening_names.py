"""Hardening: names that reach store paths, and batches from a raw Ray client."""

from __future__ import annotations

import pytest

from farm.errors import StoreError, UsageError
from farm.store import check_name


@pytest.mark.parametrize("name", ["acme\n", "a/b\n", "acme/\n", "\nacme", "a\n/b"])
def test_check_name_refuses_a_trailing_newline(name):
    """``$`` matches before a final newline: names are matched whole."""
    with pytest.raises(StoreError):
        check_name(name)


def test_check_name_still_accepts_the_farms_names():
    for name in ("acme", "a/b", "_farm/journal/000000000042.jsonl", "acme/episodes/s/ep001/episode.mp4"):
        assert check_name(name) == name


def _payload(**over):
    from farm.bench.batch import synthetic_payload, tiny_episode

    payload = synthetic_payload(1, {}, studio="acme", make=tiny_episode)
    return {k: v for k, v in payload.items() if k != "backends"} | over


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("studio", "_farm"),
        ("studio", "a/b"),
        ("studio", "acme\n"),
        ("studio", "Acme"),
        ("studio", ""),
        ("studio", 3),
        ("namespace", "_farm"),
        ("namespace", "a/b"),
        ("namespace", "../x"),
    ],
)
def test_check_payload_names_a_bad_studio_or_namespace(field, value):
    from farm.service.host import check_payload

    with pytest.raises(UsageError, match=rf"\b{field}: "):
        check_payload(_payload(**{field: value}))


def test_check_payload_checks_the_episodes_and_the_rest():
    from farm.service.host import check_payload

    check_payload(_payload())  # what farm batch submit sends passes
    item = _payload()["episodes"][0]
    with pytest.raises(UsageError, match=r"episodes\.0\.episode"):
        check_payload(_payload(episodes=[{"series": item["series"], "episode": {"id": "x"}}]))
    with pytest.raises(UsageError, match=r"episodes\.0\.series"):
        check_payload(_payload(episodes=[{"series": "s", "episode": item["episode"]}]))
    with pytest.raises(UsageError, match=r"episodes"):
        check_payload(_payload(episodes=[]))
    with pytest.raises(UsageError, match=r"priority"):
        check_payload(_payload(priority="now"))
    with pytest.raises(UsageError, match=r"backends\.render"):
        check_payload(_payload(backends={"render": "../x"}))
    with pytest.raises(UsageError, match=r"mapping"):
        check_payload(["acme"])


def test_the_controller_refuses_a_bad_studio_before_journaling(tmp_path):
    """A raw Ray client calling the actor's submit with ``_farm`` or ``a/b`` as studio (or namespace)
    gets a UsageError naming the field, and nothing is journaled or written to the store."""
    from farm.core.plan import STAGES
    from farm.runtime.local import InProcessRuntime
    from farm.service.host import ControllerService
    from farm.settings import Settings

    settings = Settings(store=str(tmp_path / "store"), metrics_port=0, **{f"backend_{s}": "noop" for s in STAGES})
    runtime = InProcessRuntime(settings.store_spec(), settings.catalog(), cpus=1)
    service = ControllerService(settings.model_dump(mode="json"), runtime=runtime, start_loop=False)
    try:
        before = sorted(service.objects.list(""))
        for field, value in [("studio", "_farm"), ("studio", "a/b"), ("namespace", "_farm"), ("namespace", "a/b")]:
            with pytest.raises(UsageError, match=rf"the batch is not valid: {field}: must be a slug"):
                service.submit(_payload(**{field: value}))
        assert service.list() == []
        assert sorted(service.objects.list("")) == before
        assert not any(n.startswith("_farm/journal/") and n.endswith(".jsonl") for n in before)  # its epoch claim only
    finally:
        service.stop()
        service.runtime.shutdown()


# -- secrets in backends' settings -----------------------------------------------------------------
def _farm_cli(*args, env):
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "farm.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


def test_farm_backends_never_prints_the_userinfo_of_a_base_url(tmp_path):
    """A base_url with ``user:password@``: the check reports the server unreachable, without the password."""
    import json

    backends = {
        "qwen": {
            "kind": "openai-chat",
            "base_url": "http://farmer:Pa55-w0rd-XYZ@127.0.0.1:9/v1",  # port 9 (discard): nothing answers
            "model": "m",
            "timeout_s": 2,
        }
    }
    env = {"FARM_BACKENDS": json.dumps(backends), "FARM_STORE": str(tmp_path / "store")}
    for args in (("backends",), ("backends", "--json")):
        proc = _farm_cli(*args, env=env)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1, out  # the check fails: nothing listens
        assert "qwen" in out
        assert "Pa55-w0rd-XYZ" not in out


def test_malformed_farm_backends_is_not_echoed(tmp_path):
    """Invalid JSON in FARM_BACKENDS is refused before masking is set up: where, and what was
    expected, never the text (it may hold keys)."""
    secret = "sk-VERYSECRET0123456789"
    for raw in (
        '{"qwen": {"kind": "openai-chat", "api_key": "' + secret + '",}}',
        '{"qwen": {"kind": "openai-chat", "api_key": "' + secret + '"',
        '{"api_key": ' + secret + "}",
        "[" * 100_000 + secret,
        '{"n": ' + "9" * 5000 + ', "api_key": "' + secret + '"}',
    ):
        proc = _farm_cli("backends", "--no-check", env={"FARM_BACKENDS": raw, "FARM_STORE": str(tmp_path / "s")})
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2, out[-2000:]
        assert "FARM_BACKENDS must be JSON" in out
        assert secret not in out and "VERYSECRET" not in out
        assert "Traceback" not in out


def test_settings_json_error_says_where():
    from farm.settings import Settings

    with pytest.raises(UsageError, match=r"FARM_BACKENDS must be JSON: Expecting .* at line 1 column \d+") as info:
        Settings.from_env({"FARM_BACKENDS": '{"x": "hush-hush-hush",}'})
    assert "hush" not in str(info.value)


def test_mask_hides_the_userinfo_of_any_url():
    from farm.observe import logs

    text = "GET http://u:s3cr3t-pw@vllm:8000/v1/models failed; s3://AKIA:k3y@minio/b ok; mail a@b.c"
    masked = logs.mask(text)
    assert "s3cr3t-pw" not in masked and "k3y" not in masked
    assert "http://***@vllm:8000/v1/models" in masked and "s3://***@minio/b" in masked
    assert masked.endswith("mail a@b.c")


def test_catalog_secrets_include_url_userinfo():
    from farm.catalog import Catalog

    catalog = Catalog({"q": {"kind": "openai-chat", "base_url": "https://bob:hunter22@vllm/v1", "model": "m"}})
    assert {"bob:hunter22", "hunter22"} <= set(catalog.secrets())


def test_a_model_name_with_a_trailing_newline_is_refused():
    from farm.errors import UsageError
    from farm.store.models import _index

    with pytest.raises(UsageError):
        _index("sdxl-1.0\n")


def test_the_cache_namespace_is_the_controllers_to_say():
    """A client's FARM_CACHE_NAMESPACE naming another studio's cache (which bricked delivery) is refused
    with the fix; the controller's FARM_CACHE_NAMESPACES may give studios a shared one."""
    from farm.catalog import Catalog
    from farm.service.host import submission
    from farm.settings import Settings

    settings = Settings(**{f"backend_{s}": "noop" for s in ("script", "image", "video", "dubbing", "assembly")})
    assert submission(_payload(namespace="acme"), settings, Catalog()).namespace == "acme"
    with pytest.raises(UsageError, match=r"namespace: studio 'acme' uses the cache namespace 'acme'.*not 'other'"):
        submission(_payload(namespace="other"), settings, Catalog())
    shared = settings.model_copy(update={"cache_namespaces": {"acme": "group"}})
    assert submission(_payload(namespace="group"), shared, Catalog()).namespace == "group"
    with pytest.raises(UsageError, match="FARM_CACHE_NAMESPACES"):
        submission(_payload(namespace="acme"), shared, Catalog())
