"""A real S3 server for the test suite.

``start_s3_server(workdir)`` yields an :class:`S3Server` describing a live
S3 endpoint on loopback:

* If ``FARM_TEST_MINIO_ENDPOINT``, ``FARM_TEST_MINIO_ACCESS_KEY`` and
  ``FARM_TEST_MINIO_SECRET_KEY`` are set (optionally ``FARM_TEST_MINIO_SECURE``
  and ``FARM_TEST_MINIO_REGION``), that MinIO is used and nothing is started.
* Otherwise OpenStack Swift with its ``s3api`` middleware is started from the
  Debian packages (``swift swift-proxy swift-account swift-container
  swift-object memcached``): memcached, the account, container and object
  servers and the proxy, each a child process bound to 127.0.0.1 on a free
  port.  All configuration, rings, data and logs live under ``workdir``;
  every process is terminated (and reaped) when the context exits, also on
  error.

Layout of ``workdir`` for the Swift backend::

    etc/            swift.conf, *-server.conf, *.builder, *.ring.gz
    devices/d1/     the single storage device (needs user xattrs, see below)
    logs/*.log      one log per process (swift logs go to stderr -> file)
    launch_swift.py helper run by the swift packages' own interpreter

Swift specifics worth knowing (all handled here):

* Swift servers always read ``/etc/swift/swift.conf`` (hard coded) unless
  ``swift.common.utils.set_swift_dir`` is called before they start, so the
  servers are started through a tiny launcher that points Swift at
  ``workdir/etc`` and then calls the same ``run_wsgi`` the
  ``swift-*-server`` scripts call.
* Swift only logs to syslog (``/dev/log``, or UDP localhost:514 as a silent
  fallback).  There is no syslog here, so the launcher runs the servers with
  ``verbose`` (Swift's ``-v``: log to stderr, which goes to ``logs/*.log``)
  and mutes the syslog handler.
* ``workers = 0`` keeps every Swift server in a single process (no forked
  workers), so terminating the pid we started really stops the server.
* ``tempauth`` refuses to authenticate anything without memcache
  ("Memcache required"), so memcached is not optional.
* ``s3api`` only supports multipart uploads when ``slo`` is in the pipeline
  after it; otherwise it silently switches multipart off.
* The object server keeps metadata in ``user.*`` extended attributes; if the
  filesystem of ``workdir`` does not support them (e.g. tmpfs before Linux
  6.6) the device directory is created in the first of $TMPDIR, /var/tmp and
  ~/.cache that does, and removed afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.client
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import minio

__all__ = [
    "DEFAULT_REGION",
    "INSTALL_HINT",
    "S3Server",
    "s3_server_available",
    "start_s3_server",
]

ENV_ENDPOINT = "FARM_TEST_MINIO_ENDPOINT"
ENV_ACCESS_KEY = "FARM_TEST_MINIO_ACCESS_KEY"
ENV_SECRET_KEY = "FARM_TEST_MINIO_SECRET_KEY"
ENV_SECURE = "FARM_TEST_MINIO_SECURE"
ENV_REGION = "FARM_TEST_MINIO_REGION"

DEFAULT_REGION = "us-east-1"

INSTALL_HINT = (
    "no S3 server for the tests: run "
    "'apt-get install swift swift-proxy swift-account swift-container "
    "swift-object memcached' (OpenStack Swift with s3api is then started on "
    "loopback), or point the tests at a MinIO by setting "
    f"{ENV_ENDPOINT}, {ENV_ACCESS_KEY} and {ENV_SECRET_KEY} "
    f"(optionally {ENV_SECURE})"
)

# tempauth user "user_test_tester = testing .admin": S3 access key is
# "<account>:<user>", the secret is the tempauth password.
SWIFT_ACCESS_KEY = "test:tester"
SWIFT_SECRET_KEY = "testing"

_SWIFT_BINARIES = (
    "swift-proxy-server",
    "swift-account-server",
    "swift-container-server",
    "swift-object-server",
    "swift-ring-builder",
)
_BACKENDS = ("account", "container", "object")
_FALLBACK_PATH = "/usr/bin:/usr/sbin:/usr/local/bin:/usr/local/sbin:/bin:/sbin"
_STOP_GRACE_S = 10.0
_LOG_TAIL_LINES = 40
_START_ATTEMPTS = 3  # retried only when a port we picked got taken meanwhile


@dataclasses.dataclass(frozen=True)
class S3Server:
    """Where a running S3 server is and how to talk to it."""

    endpoint: str  # "127.0.0.1:PORT", no scheme (what minio.Minio wants)
    access_key: str
    secret_key: str
    secure: bool = False
    region: str = DEFAULT_REGION
    backend: str = "swift"  # "swift" (started here) or "minio" (from env)

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    def client(self, **kwargs: Any) -> minio.Minio:
        """A ``minio.Minio`` for this server (extra kwargs are passed on).

        The region is always given so the client never has to ask the server
        for a bucket's location.
        """
        from minio import Minio

        kwargs.setdefault("region", self.region)
        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=self.secure,
            **kwargs,
        )


# --------------------------------------------------------------------------
# public API


def s3_server_available() -> str | None:
    """None if ``start_s3_server`` can provide a server, else why not."""
    try:
        if _minio_from_env() is not None:
            return None
    except RuntimeError as exc:
        return str(exc)
    tools = _swift_toolchain()
    if isinstance(tools, str):
        return tools
    if not any(_supports_user_xattr(d) for d in _xattr_fallback_dirs()):
        return (
            "no filesystem with user extended attributes found for Swift's "
            "object server (tried $TMPDIR, /var/tmp, ~/.cache); "
            f"alternatively set {ENV_ENDPOINT}, {ENV_ACCESS_KEY} and "
            f"{ENV_SECRET_KEY} to use a MinIO"
        )
    return None


@contextlib.contextmanager
def start_s3_server(workdir: Path, *, timeout: float = 60.0) -> Iterator[S3Server]:
    """Yield a running S3 server; stop whatever was started on exit.

    ``timeout`` bounds the wait for the servers to become ready.
    Raises ``RuntimeError`` (with install instructions, or with the tails of
    the servers' logs) if no server can be provided.
    """
    configured = _minio_from_env()
    if configured is not None:
        yield configured
        return

    tools = _swift_toolchain()
    if isinstance(tools, str):
        raise RuntimeError(tools)

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        devices = _devices_dir(workdir, stack)
        for attempt in range(1, _START_ATTEMPTS + 1):
            procs = _Processes(workdir / "logs")
            stack.callback(procs.stop)
            try:
                server = _start_swift(tools, workdir, devices, procs, timeout)
                break
            except _PortTaken:
                procs.stop()
                if attempt == _START_ATTEMPTS:
                    raise RuntimeError(
                        f"Swift could not bind its loopback ports ({_START_ATTEMPTS} attempts)\n" + procs.log_tails()
                    ) from None
        yield server


# --------------------------------------------------------------------------
# MinIO from the environment


def _minio_from_env() -> S3Server | None:
    names = (ENV_ENDPOINT, ENV_ACCESS_KEY, ENV_SECRET_KEY)
    values = {name: os.environ.get(name, "").strip() for name in names}
    if not any(values.values()):
        return None
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise RuntimeError(
            f"incomplete MinIO configuration: {', '.join(missing)} not set (need all of {', '.join(names)})"
        )
    endpoint = values[ENV_ENDPOINT]
    secure = _truthy(os.environ.get(ENV_SECURE, ""))
    # Tolerate a URL; minio.Minio wants host[:port] only.
    for scheme, is_secure in (("https://", True), ("http://", False)):
        if endpoint.lower().startswith(scheme):
            endpoint = endpoint[len(scheme) :]
            if ENV_SECURE not in os.environ:
                secure = is_secure
    endpoint = endpoint.rstrip("/")
    return S3Server(
        endpoint=endpoint,
        access_key=values[ENV_ACCESS_KEY],
        secret_key=values[ENV_SECRET_KEY],
        secure=secure,
        region=os.environ.get(ENV_REGION, "").strip() or DEFAULT_REGION,
        backend="minio",
    )


def _truthy(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


# --------------------------------------------------------------------------
# locating Swift


@dataclasses.dataclass(frozen=True)
class _Toolchain:
    python: str  # interpreter the swift packages run under
    memcached: str


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=_FALLBACK_PATH)


def _script_interpreter(script: str) -> str | None:
    try:
        with open(script, "rb") as fh:
            first = fh.readline(512).decode("utf-8", "replace").strip()
    except OSError:
        return None
    if not first.startswith("#!"):
        return None
    parts = first[2:].split()
    if not parts:
        return None
    if os.path.basename(parts[0]) == "env" and len(parts) > 1:
        return _which(parts[1])
    return parts[0] if os.access(parts[0], os.X_OK) else None


@functools.cache
def _swift_toolchain() -> _Toolchain | str:
    """The Swift toolchain, or the reason (with install hint) it is unusable."""
    if not hasattr(os, "setxattr"):
        return f"Swift needs Linux (extended attributes); {INSTALL_HINT}"
    found = {name: _which(name) for name in (*_SWIFT_BINARIES, "memcached")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        return f"{', '.join(missing)} not found; {INSTALL_HINT}"
    python = _script_interpreter(found["swift-proxy-server"])  # type: ignore[arg-type]
    if python is None:
        return f"cannot tell which python runs {found['swift-proxy-server']}; {INSTALL_HINT}"
    try:
        probe = subprocess.run(
            [
                python,
                "-c",
                "import swift.common.wsgi, swift.cli.ringbuilder, "
                "swift.common.middleware.s3api.s3api, "
                "swift.common.middleware.tempauth, swift.common.middleware.slo",
            ],
            capture_output=True,
            text=True,
            env=_child_env(),
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {python} to check for swift ({exc}); {INSTALL_HINT}"
    if probe.returncode != 0:
        return (
            f"{python} cannot import swift with s3api "
            f"({probe.stderr.strip().splitlines()[-1:] or probe.returncode}); "
            f"{INSTALL_HINT}"
        )
    return _Toolchain(python=python, memcached=found["memcached"])  # type: ignore[arg-type]


def _child_env() -> dict[str, str]:
    # The swift packages run under the distribution's python; keep the
    # project's interpreter settings away from it.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH"} and not k.startswith("VIRTUAL_ENV")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


# --------------------------------------------------------------------------
# extended attributes


def _supports_user_xattr(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".xattr-probe-", dir=directory)
    except OSError:
        return False
    try:
        os.setxattr(probe, "user.farm.probe", b"1")
        return os.getxattr(probe, "user.farm.probe") == b"1"
    except (OSError, AttributeError):
        return False
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)


def _xattr_fallback_dirs() -> list[Path]:
    dirs = [Path(tempfile.gettempdir()), Path("/var/tmp")]
    with contextlib.suppress(RuntimeError, KeyError):
        dirs.append(Path.home() / ".cache")
    return dirs


def _devices_dir(workdir: Path, stack: contextlib.ExitStack) -> Path:
    """Directory holding the Swift device "d1"; must support user xattrs."""
    devices = workdir / "devices"
    if _supports_user_xattr(devices):
        return devices
    for base in _xattr_fallback_dirs():
        if not _supports_user_xattr(base):
            continue
        fallback = Path(tempfile.mkdtemp(prefix="farm-swift-devices-", dir=base))
        stack.callback(shutil.rmtree, fallback, ignore_errors=True)
        (workdir / "devices.txt").write_text(f"{devices} has no user xattr support; devices live in {fallback}\n")
        return fallback
    raise RuntimeError(
        f"{workdir} does not support user extended attributes, which Swift's "
        "object server needs, and neither do "
        + ", ".join(str(d) for d in _xattr_fallback_dirs())
        + f"; use another work directory or set {ENV_ENDPOINT}, "
        f"{ENV_ACCESS_KEY} and {ENV_SECRET_KEY} to use a MinIO"
    )


# --------------------------------------------------------------------------
# processes


class _PortTaken(Exception):
    """A server could not bind the port picked for it (raced with someone)."""


class _Processes:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[Any] = []

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = open(self.log_path(name), "ab")  # noqa: SIM115 (closed in stop)
        self._logs.append(log)
        log.write(f"==> {' '.join(argv)}\n".encode())
        log.flush()
        self.procs[name] = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            close_fds=True,
            # Own session: a Ctrl-C in the terminal reaches pytest only, and
            # pytest's teardown stops the servers in order.
            start_new_session=True,
        )

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                text = _tail(self.log_path(name), _LOG_TAIL_LINES)
                # memcached: "Address already in use"; swift (after
                # bind_timeout): "Could not bind to 127.0.0.1:PORT"
                if "Address already in use" in text or "Could not bind to" in text:
                    raise _PortTaken(name)
                raise RuntimeError(f"{name} exited with status {proc.returncode} during startup\n{self.log_tails()}")

    def stop(self) -> None:
        """SIGTERM everything (newest first), wait, SIGKILL stragglers."""
        procs = list(self.procs.values())[::-1]
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_S
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self.procs.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def log_tails(self) -> str:
        parts = []
        for name in self.procs or [p.stem for p in sorted(self.log_dir.glob("*.log"))]:
            path = self.log_path(name)
            parts.append(f"--- last lines of {path} ---\n{_tail(path, _LOG_TAIL_LINES)}")
        return "\n".join(parts)


def _tail(path: Path, lines: int) -> str:
    try:
        data = path.read_bytes()[-64 * 1024 :]
    except OSError as exc:
        return f"(unreadable: {exc})"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


# --------------------------------------------------------------------------
# Swift


# Runs under the swift packages' interpreter (not the project's python).
_LAUNCHER = r'''
"""Generated by tests/support/s3server.py -- starts Swift pieces for tests."""
import os
import signal
import sys


def die_with_parent():
    # Safety net for a test run that is killed without running its teardown:
    # the kernel sends us SIGTERM when the process that started us dies.
    parent = int(os.environ.get("FARM_S3_PARENT_PID") or 0)
    if not parent:
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        return
    if os.getppid() != parent:
        sys.exit("parent %d already gone" % parent)


def build_rings(swift_dir, specs):
    # swift-ring-builder's own entry point, called in one interpreter instead
    # of nine separate swift-ring-builder processes (~1 s instead of ~7 s).
    from swift.cli.ringbuilder import main
    os.chdir(swift_dir)
    for spec in specs:
        kind, port = spec.split("=")
        for args in (["create", "0", "1", "1"],
                     ["add", "r1z1-127.0.0.1:%s/d1" % port, "1"],
                     ["rebalance"]):
            argv = ["swift-ring-builder", kind + ".builder"] + args
            print("+ " + " ".join(argv), flush=True)
            try:
                status = main(argv)
            except SystemExit as exc:
                status = exc.code
            if status not in (None, 0, 1):  # 1 = done with warnings
                sys.exit("%s: exit status %s" % (" ".join(argv), status))


def run_server(swift_dir, section, conf_path):
    # Swift reads /etc/swift/swift.conf unless told otherwise; use ours.
    from swift.common import utils
    utils.set_swift_dir(swift_dir)
    from swift.common import constraints, storage_policy
    storage_policy.reload_storage_policies()
    constraints.reload_constraints()
    # No syslog here: keep only the console (stderr) handler that
    # verbose=True adds; stderr is the server's log file.
    import logging.handlers
    logging.handlers.SysLogHandler.emit = lambda self, record: None
    from swift.common.wsgi import run_wsgi
    sys.exit(run_wsgi(conf_path, section, verbose=True))


def main():
    die_with_parent()
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "rings":
        build_rings(args[0], args[1:])
    elif mode == "server":
        run_server(*args)
    elif mode == "exec":
        os.execv(args[0], args)
    else:
        sys.exit("unknown mode %r" % mode)


main()
'''


def _start_swift(
    tools: _Toolchain,
    workdir: Path,
    devices: Path,
    procs: _Processes,
    timeout: float,
) -> S3Server:
    started = time.monotonic()
    deadline = started + timeout
    etc = workdir / "etc"
    etc.mkdir(exist_ok=True)
    for stale in [*etc.glob("*.builder"), *etc.glob("*.ring.gz")]:
        stale.unlink()
    shutil.rmtree(etc / "backups", ignore_errors=True)
    (devices / "d1").mkdir(parents=True, exist_ok=True)
    launcher = workdir / "launch_swift.py"
    launcher.write_text(_LAUNCHER)

    ports = dict(zip(("memcached", *_BACKENDS, "proxy"), _free_ports(5)))
    user = pwd.getpwuid(os.geteuid()).pw_name
    _write_swift_configs(etc, devices, ports, user)

    env = _child_env()
    # PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so
    # only ask for it from the main thread (which lives as long as pytest).
    if threading.current_thread() is threading.main_thread():
        env["FARM_S3_PARENT_PID"] = str(os.getpid())

    mc_argv = [
        tools.memcached,
        "-l",
        "127.0.0.1",
        "-p",
        str(ports["memcached"]),
        "-U",
        "0",
        "-m",
        "64",
        "-t",
        "1",
        "-c",
        "1024",
    ]
    if os.geteuid() == 0:
        mc_argv += ["-u", user]  # memcached refuses to run as root otherwise
    procs.start("memcached", [tools.python, str(launcher), "exec", *mc_argv], env)
    # Only the proxy needs the rings to start; build them while the storage
    # servers import swift.
    for kind in _BACKENDS:
        procs.start(kind, _server_argv(tools, launcher, etc, kind), env)
    try:
        rings = subprocess.run(
            [tools.python, str(launcher), "rings", str(etc), *(f"{kind}={ports[kind]}" for kind in _BACKENDS)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=max(1.0, deadline - time.monotonic()),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(
            f"building the Swift rings took more than {timeout:.0f}s:\n"
            + (exc.output or b"").decode("utf-8", "replace")
        ) from None
    procs.log_path("rings").write_bytes(rings.stdout)
    if rings.returncode != 0:
        raise RuntimeError("building the Swift rings failed:\n" + rings.stdout.decode("utf-8", "replace"))
    procs.start("proxy", _server_argv(tools, launcher, etc, "proxy"), env)

    pending = {
        "memcached": lambda: _memcached_ready(ports["memcached"]),
        **{kind: functools.partial(_healthcheck_ok, ports[kind]) for kind in (*_BACKENDS, "proxy")},
    }
    while pending:
        procs.check_alive()
        for name, ready in list(pending.items()):
            if ready():
                del pending[name]
        if not pending:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"Swift not ready after {timeout:.0f}s (waiting for {', '.join(sorted(pending))})\n{procs.log_tails()}"
            )
        time.sleep(0.1)

    server = S3Server(
        endpoint=f"127.0.0.1:{ports['proxy']}",
        access_key=SWIFT_ACCESS_KEY,
        secret_key=SWIFT_SECRET_KEY,
        secure=False,
        region=DEFAULT_REGION,
        backend="swift",
    )
    _wait_s3_ready(server, procs, deadline, timeout)
    (workdir / "startup.txt").write_text(
        f"endpoint {server.endpoint}\nready after {time.monotonic() - started:.2f}s\n"
        + "".join(f"{name} pid {p.pid}\n" for name, p in procs.procs.items())
    )
    return server


def _server_argv(tools: _Toolchain, launcher: Path, etc: Path, kind: str) -> list[str]:
    return [
        tools.python,
        str(launcher),
        "server",
        str(etc),
        f"{kind}-server",
        str(etc / f"{kind}-server.conf"),
    ]


def _write_swift_configs(etc: Path, devices: Path, ports: dict[str, int], user: str) -> None:
    # Fixed hash prefix/suffix: a reused workdir keeps finding its objects.
    (etc / "swift.conf").write_text(
        "[swift-hash]\n"
        "swift_hash_path_prefix = farm-test-prefix\n"
        "swift_hash_path_suffix = farm-test-suffix\n"
        "\n"
        "[storage-policy:0]\n"
        "name = Policy-0\n"
        "default = yes\n"
    )

    def default_section(name: str, port: int) -> str:
        return (
            "[DEFAULT]\n"
            "bind_ip = 127.0.0.1\n"
            f"bind_port = {port}\n"
            # one process per server: no forked workers to chase at exit
            "workers = 0\n"
            # give up quickly on a taken port (default: retry for 30 s); the
            # caller then retries with fresh ports
            "bind_timeout = 3\n"
            f"user = {user}\n"
            f"swift_dir = {etc}\n"
            f"devices = {devices}\n"
            "mount_check = false\n"
            # plain directories on whatever filesystem: no fallocate and no
            # free-space reserve (a nearly full disk must not yield 507s)
            "disable_fallocate = true\n"
            "fallocate_reserve = 0\n"
            f"log_name = {name}\n"
            "log_level = INFO\n"
        )

    for kind in _BACKENDS:
        (etc / f"{kind}-server.conf").write_text(
            default_section(f"{kind}-server", ports[kind]) + "\n[pipeline:main]\n"
            f"pipeline = healthcheck {kind}-server\n"
            f"\n[app:{kind}-server]\n"
            f"use = egg:swift#{kind}\n"
            "\n[filter:healthcheck]\n"
            "use = egg:swift#healthcheck\n"
        )

    filters = {
        "catch_errors": "",
        "gatekeeper": "",
        "healthcheck": "",
        "proxy-logging": "",
        "cache": f"memcache_servers = 127.0.0.1:{ports['memcached']}\n",
        "listing_formats": "",
        "s3api": (
            f"location = {DEFAULT_REGION}\n"
            "dns_compliant_bucket_names = true\n"
            "allow_multipart_uploads = true\n"
            "min_segment_size = 5242880\n"
            "s3_acl = false\n"
        ),
        "tempauth": (f"user_{SWIFT_ACCESS_KEY.replace(':', '_')} = {SWIFT_SECRET_KEY} .admin\n"),
        "bulk": "",
        "copy": "",
        "slo": "",
        "dlo": "",
        "versioned_writes": "",
    }
    eggs = {"cache": "memcache", "proxy-logging": "proxy_logging"}
    # s3api before tempauth (auth), slo after both (multipart uploads).
    pipeline = (
        "catch_errors gatekeeper healthcheck proxy-logging cache "
        "listing_formats s3api tempauth bulk copy slo dlo versioned_writes "
        "proxy-logging proxy-server"
    )
    text = default_section("proxy-server", ports["proxy"])
    text += f"\n[pipeline:main]\npipeline = {pipeline}\n"
    text += "\n[app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\n"
    for name, options in filters.items():
        text += f"\n[filter:{name}]\nuse = egg:swift#{eggs.get(name, name)}\n{options}"
    (etc / "proxy-server.conf").write_text(text)


def _memcached_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"version\r\n")
            return sock.recv(64).startswith(b"VERSION")
    except OSError:
        return False


def _healthcheck_ok(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/healthcheck")
        response = conn.getresponse()
        return response.status == 200 and response.read().strip() == b"OK"
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _wait_s3_ready(server: S3Server, procs: _Processes, deadline: float, timeout: float) -> None:
    """An authenticated S3 request must work (tempauth + memcache + account)."""
    import urllib3

    client = server.client(http_client=urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=10), retries=False))
    from minio.error import S3Error

    last_error: Exception | None = None
    while True:
        procs.check_alive()
        try:
            client.list_buckets()
            return
        except S3Error as exc:
            # A well-formed S3 error below 500 (AccessDenied,
            # SignatureDoesNotMatch, ...) is a configuration problem that
            # waiting will not fix.
            if exc.response is not None and exc.response.status < 500:
                raise RuntimeError(
                    f"Swift's S3 API rejected {server.access_key!r}: {exc!r}\n{procs.log_tails()}"
                ) from exc
            last_error = exc
        except Exception as exc:
            last_error = exc
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"Swift's S3 API did not answer within {timeout:.0f}s: {last_error!r}\n{procs.log_tails()}"
            )
        time.sleep(0.2)
