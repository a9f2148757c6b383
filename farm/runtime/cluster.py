"""Joining a Ray cluster, and the farm controller's named actor on it (``farm controller``, ``farm batch``)."""

from __future__ import annotations

import subprocess
from typing import Any

import ray

from farm.errors import FarmError
from farm.settings import Settings

ACTOR_NAME, NAMESPACE = "farm-controller", "farm"


def connect(settings: Settings, *, start_head: bool = False) -> None:
    """Join the cluster at settings.ray_address, or the one running on this machine."""
    if ray.is_initialized():
        return
    address = settings.ray_address or "auto"
    try:
        ray.init(address=address, namespace="farm", logging_level="ERROR", log_to_driver=False)
    except ConnectionError:
        if not start_head or settings.ray_address:
            raise FarmError(
                f"no Ray cluster at {address}: start one with `farm controller start` "
                "(or `ray start --head`), or give its address with --address / FARM_RAY_ADDRESS"
            ) from None
        args = ["ray", "start", "--head", "--disable-usage-stats", "--include-dashboard=false"]
        if settings.num_cpus:
            args += ["--num-cpus", str(settings.num_cpus)]
        proc = subprocess.run(args, capture_output=True, text=True)
        if proc.returncode != 0:
            raise FarmError(f"could not start a local Ray head: {proc.stderr.strip()[-800:]}") from None
        ray.init(address="auto", namespace="farm", logging_level="ERROR", log_to_driver=False)


def controller_actor(settings: Settings, service: type, *, create: bool = False) -> Any:
    """The controller's named actor (``service`` hosted by Ray); with ``create``, start it if it is
    not running. Ray restarts it when its process dies."""
    try:
        return ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)
    except ValueError:
        if not create:
            raise FarmError("the farm controller is not running: start it with `farm controller start`") from None
    actor_cls = ray.remote(service)
    handle = actor_cls.options(
        name=ACTOR_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=0,
        max_concurrency=16,
        num_cpus=0,
        resources=settings.controller_resources or None,
    ).remote(settings.model_dump(mode="json") | _secrets(settings))
    ray.get(handle.ping.remote())
    return handle


def _secrets(settings: Settings) -> dict:
    return {k: getattr(settings, k).get_secret_value() for k in ("s3_access_key", "s3_secret_key")}


def call(handle: Any, method: str, *args: Any) -> Any:
    """Call an actor method and wait. The farm's own errors it raises (a batch that is not valid: a
    UsageError) come back as themselves, a KeyError (an unknown batch) as a FarmError."""
    try:
        return ray.get(getattr(handle, method).remote(*args))
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, Exception) else exc
        if isinstance(cause, FarmError):
            raise cause from None  # Ray's copy of it is a traceback for a message
        if isinstance(cause, KeyError):
            raise FarmError(str(cause.args[0])) from None
        raise


def kill(handle: Any) -> None:
    """Stop an actor for good (Ray does not restart it)."""
    ray.kill(handle, no_restart=True)
