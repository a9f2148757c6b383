"""Which Ray cluster the farm talks to, joining it, and the farm controller's named actor on it
(``farm controller``, ``farm batch``).

The farm joins only a cluster it was given (``--address`` / ``FARM_RAY_ADDRESS``) or the local head
that ``farm controller start`` started and recorded (``<state dir>/ray.json``), never "whatever Ray
runs on this machine": on a shared machine that may be another user's farm. Before Ray is asked to
join, the address is probed with one short gRPC call, so a wrong address or a missing auth token is
one line within seconds instead of minutes of Ray's retries.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from pydantic import SecretStr

from farm.errors import FarmError, UsageError
from farm.settings import Settings

ACTOR_NAME, NAMESPACE = "farm-controller", "farm"
PROBE_TIMEOUT_S = 3.0
_AUTH_MODE = "RAY_AUTH_MODE"


class NoCluster(FarmError):
    """Nothing answers at a Ray address."""


@dataclass(frozen=True)
class Where:
    """A cluster the farm may join, and why it is that one (said to the user)."""

    address: str
    source: str
    record: dict | None = None

    def describe(self) -> str:
        return f"Ray at {self.address} ({self.source})"


def state_dir() -> Path:
    """Where the farm records what it started on this machine: FARM_STATE_DIR, else
    $XDG_STATE_HOME/farm, else ~/.local/state/farm."""
    if os.environ.get("FARM_STATE_DIR"):
        return Path(os.environ["FARM_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "farm"


def record_path() -> Path:
    return state_dir() / "ray.json"


def admin_path() -> Path:
    return state_dir() / "admin_token"


def ensure_admin_token(settings: Settings) -> Settings:
    """``settings`` with the controller's admin credential: FARM_ADMIN_TOKEN when set (a Secret on a
    cluster), else the one in the state dir of this machine, made now (mode 0600) when there is none."""
    if settings.admin_token.get_secret_value():
        return settings
    path = admin_path()
    token = _read_secret(path)
    if token is None:
        from secrets import token_urlsafe

        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another start made it a moment ago: use that one
            token = _read_secret(path)
        else:
            token = "farm_admin_" + token_urlsafe(32)
            with os.fdopen(fd, "w") as out:
                out.write(token + "\n")
    if token is None:
        raise FarmError(f"the admin credential {path} is empty or unreadable: remove it, then start the controller")
    return settings.model_copy(update={"admin_token": SecretStr(token)})


def _read_secret(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FarmError(f"cannot read the admin credential {path}: {exc.strerror}") from None


def credential(settings: Settings | None = None) -> str | None:
    """The token this client sends the controller: FARM_TOKEN / --token, else FARM_ADMIN_TOKEN, else the
    admin credential `farm controller start` left in this machine's state dir, else None."""
    for secret in (settings.token, settings.admin_token) if settings is not None else ():
        if secret.get_secret_value():
            return secret.get_secret_value()
    if settings is None:
        for name in ("FARM_TOKEN", "FARM_ADMIN_TOKEN"):
            if os.environ.get(name, "").strip():
                return os.environ[name].strip()
    try:
        return _read_secret(admin_path())
    except FarmError:
        return None


def read_record() -> dict | None:
    try:
        record = json.loads(record_path().read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("address"), str) else None


def resolve(settings: Settings) -> Where | None:
    """The cluster to join: the one given, else the one the farm started here (maybe gone), else None."""
    if settings.ray_address:
        return Where(settings.ray_address, "given by --address / FARM_RAY_ADDRESS")
    record = read_record()
    if record is not None:
        return Where(record["address"], f"the local head `farm controller start` started; {record_path()}", record)
    return None


# --- probing an address before Ray tries it -------------------------------------------------------


def _token() -> tuple[str | None, str]:
    """The auth token this process would send, and where it comes from (Ray's own order)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    for path, name in (
        (os.environ.get("RAY_AUTH_TOKEN_PATH"), "RAY_AUTH_TOKEN_PATH"),
        (str(Path.home() / ".ray" / "auth_token"), "~/.ray/auth_token"),
    ):
        if path:
            try:
                token = Path(path).read_text().strip()
            except OSError:
                continue
            if token:
                return token, name
    return None, ""


def _split(address: str) -> tuple[str, int, bool]:
    """(host, port, is Ray Client) of ``host:port`` or ``ray://host:port``; UsageError otherwise."""
    client = address.startswith("ray://")
    rest = address[len("ray://") :] if client else address
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in rest.rstrip("/"):
        raise UsageError(
            f"--address / FARM_RAY_ADDRESS {address!r} is not a Ray address: "
            "use HOST:PORT (the head's GCS port, 6379 by default) or ray://HOST:10001 (Ray Client)"
        )
    return host.strip("[]"), int(port), client


def _call(address: str, client: bool, token: str | None, timeout: float) -> Any:
    """One unary gRPC call a Ray head answers; returns the grpc status code (None when OK)."""
    import grpc  # Ray's own dependency

    method = "/ray.rpc.RayletDriver/ClusterInfo" if client else "/ray.rpc.NodeInfoGcsService/GetClusterId"
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(address) as channel:
        stub = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        try:
            stub(b"", timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code()
    return None


def probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Check that a Ray head answers at ``address`` and accepts this process's auth token; turn token
    auth on for this process when the head needs it and a token is at hand. Raises FarmError (one line)
    otherwise, within about ``timeout`` seconds."""
    import grpc

    host, port, client = _split(address)
    target = f"{host}:{port}"
    mode = os.environ.get(_AUTH_MODE, "").lower()
    token, origin = _token()
    sent = token if mode == "token" else None
    code = _call(target, client, sent, timeout)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        raise NoCluster(
            f"no Ray cluster answers at {address} (nothing listening, or not reachable within {timeout:g} s): "
            "check the address, or start the farm's own with `farm controller start`"
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        if sent is None and token is not None and _call(target, client, token, timeout) is None:
            use_token_auth()  # the head takes the token this machine has: send it
            return
        if sent is None and token is None:
            raise FarmError(
                f"the Ray cluster at {address} requires an auth token (Ray's token authentication) and none is "
                "set: export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<the cluster's token> (print it on the head "
                "with `ray get-auth-token`), or put it in ~/.ray/auth_token"
            )
        raise FarmError(
            f"the Ray cluster at {address} refused the auth token from {origin}: "
            "set RAY_AUTH_TOKEN to the cluster's token (print it on the head with `ray get-auth-token`)"
        )


def use_token_auth() -> None:
    """Send the auth token on every Ray connection this process (and its children) makes: Ray reads
    the mode from RAY_AUTH_MODE, and caches it, so its config is read again."""
    os.environ[_AUTH_MODE] = "token"
    try:
        from ray._raylet import Config  # type: ignore[attr-defined]

        Config.initialize("")
    except (ImportError, AttributeError):  # a Ray without token auth: nothing to refresh
        pass


# --- joining ----------------------------------------------------------------------------------------


def connect(settings: Settings, *, start_head: bool = False) -> Where | None:
    """Join the cluster given, or the local head the farm started; with ``start_head`` (``farm
    controller start``), start and record one when there is neither. Returns where, or None when this
    process had already joined a cluster (a test, a script)."""
    if ray.is_initialized():
        return None
    where = resolve(settings)
    if where is not None and where.record is not None and not settings.ray_address:
        try:
            probe(where.address)
        except NoCluster:
            if not start_head:
                raise FarmError(
                    f"the local Ray head the farm started at {where.address} is not running any more "
                    f"({record_path()}): start it again with `farm controller start`"
                ) from None
            where = None  # gone: start a new one
    elif where is not None:
        probe(where.address)
    if where is None:
        if not start_head:
            raise FarmError(
                "no farm cluster to talk to: start one on this machine with `farm controller start`, "
                "or give a cluster's address with --address / FARM_RAY_ADDRESS"
            )
        where = start_local_head(settings)
    _init(where.address)
    return where


def _init(address: str) -> None:
    try:
        ray.init(address=address, namespace=NAMESPACE, logging_level="ERROR", log_to_driver=False)
    except (ConnectionError, RuntimeError) as exc:  # it answered the probe, then failed: say so in one line
        raise FarmError(f"could not join the Ray cluster at {address}: {str(exc).splitlines()[0][:300]}") from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_command(*args: str) -> list[str]:
    """Ray's CLI from this farm's own environment (works when its bin folder is not on PATH)."""
    return [sys.executable, "-m", "ray.scripts.scripts", *args]


def start_local_head(settings: Settings) -> Where:
    """Start a Ray head on this machine for the farm, with token auth, in its own temp folder (so no
    other ``ray.init()`` here joins it by accident), and record it."""
    port = _free_port()
    temp = Path(tempfile.gettempdir()) / f"farm-ray-{os.getuid()}-{port}"
    env = dict(os.environ, RAY_AUTH_MODE="token")
    env.pop("RAY_ADDRESS", None)
    token, _ = _token()
    if token is None:  # Ray's own generator, saved where Ray and the farm look (~/.ray/auth_token)
        generated = subprocess.run(
            _ray_command("get-auth-token", "--generate"), capture_output=True, text=True, env=env
        )
        if generated.returncode != 0:
            raise FarmError(f"could not create a Ray auth token: {generated.stderr.strip()[-400:]}")
    args = _ray_command(
        "start",
        "--head",
        f"--port={port}",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
        "--include-dashboard=false",
    )
    if settings.num_cpus:
        args.append(f"--num-cpus={settings.num_cpus}")
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise FarmError(f"could not start a local Ray head: {proc.stderr.strip()[-800:]}")
    try:
        address = (temp / "ray_current_cluster").read_text().strip()
    except OSError:
        address = f"127.0.0.1:{port}"
    record = {"address": address, "temp_dir": str(temp), "auth": "token", "started_at": time.time()}
    path = record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    use_token_auth()
    return Where(address, f"a local head started now; recorded in {path}", record)


def stop_local_head() -> str | None:
    """Stop the local Ray head the farm started (every process of its temp folder) and forget it.
    Returns its address, or None when the farm started none here."""
    record = read_record()
    if record is None:
        return None
    if ray.is_initialized():
        ray.shutdown()  # this process's connection first
    temp = record.get("temp_dir") or ""
    if temp:
        _signal_all(temp, signal.SIGTERM)
        # the raylet and workers end at once; the GCS and a helper ignore SIGTERM for long (as with
        # `ray stop`): nothing of the head's is kept (the farm's state is its journal), so a moment's
        # grace, then SIGKILL
        deadline = time.monotonic() + 3
        while _pids_of(temp) and time.monotonic() < deadline:
            time.sleep(0.2)
        _signal_all(temp, signal.SIGKILL)
    record_path().unlink(missing_ok=True)
    return str(record["address"])


def _pids_of(temp: str) -> list[int]:
    """This user's processes whose command line names the head's temp folder (its GCS, raylet, workers)."""
    me, pids = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if temp.encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def _signal_all(temp: str, sig: int) -> None:
    for pid in _pids_of(temp):
        with contextlib.suppress(OSError):  # gone already
            os.kill(pid, sig)


# --- the controller actor ---------------------------------------------------------------------------


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
    call(handle, "ping", token=credential(settings))
    return handle


def _secrets(settings: Settings) -> dict:
    if not settings.admin_token.get_secret_value():  # a controller on a cluster never runs unguarded
        raise UsageError(
            "the controller needs an admin credential: set FARM_ADMIN_TOKEN, or start it with `farm controller start`"
        )
    return {k: getattr(settings, k).get_secret_value() for k in ("s3_access_key", "s3_secret_key", "admin_token")}


def call(handle: Any, method: str, *args: Any, token: str | None = None, **options: Any) -> Any:
    """Call an actor method with this client's ``token`` (default: ``credential()``) and wait. The farm's
    own errors it raises (a batch that is not valid, a token that may not: a UsageError) come back as
    themselves, a KeyError (an unknown batch) as a FarmError."""
    token = token if token is not None else credential()
    try:
        return ray.get(getattr(handle, method).remote(*args, token=token, **options))
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
