"""Disks that refuse writes, killed workers' scratch, durable renames and publishing without a copy.

Every fault is real: a small tmpfs really filled up, a tmpfs really remounted read-only, a worker
really killed with SIGKILL, the system calls of a put really traced (strace). Tests that mount need
root (CI runs as root) and are skipped with that reason otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.errors import ActionFailed, StoreUnwritable
from farm.settings import StoreSpec
from farm.store import ArtifactStore, LocalStore, file_digest
from tests.conftest import wait_until, write_specs

ROOT = Path(__file__).resolve().parents[2]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs, which needs root (CI runs as root)")


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "2m") -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``folder`` for the block, unmounted after it."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system of ``folder`` with one file until at most ``leave`` bytes are free."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while shutil.disk_usage(folder).free > leave:
                f.write(b"\0" * min(1 << 16, max(4096, shutil.disk_usage(folder).free - leave)))
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def temporaries(root: Path) -> list[Path]:
    return list(root.rglob(".tmp-*")) if root.exists() else []


def _noop_action(key: str, sleep_s: float = 0) -> dict:
    return {
        "key": key,
        "stage": "video",
        "op": "clip",
        "backend": "noop",
        "version": "1",
        "params": {"sleep_s": sleep_s} if sleep_s else {},
        "label": "clip s01-01",
        "inputs": {},
        "context": {"studio": "acme", "series": "s", "episode": "e"},
    }


@needs_root
def test_full_store_refuses_a_put_with_one_line_and_no_partial_file(tmp_path):
    """A put onto a full disk is one StoreUnwritable line (where, free space, the fix); nothing half-written stays."""
    with tmpfs(tmp_path / "mnt") as mnt:
        objects = LocalStore(mnt / "store")
        filler = fill(mnt, leave=200_000)
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(1_000_000))
        with pytest.raises(StoreUnwritable) as caught:
            objects.put_file("x/big.bin", big)
        message = str(caught.value)
        assert "\n" not in message and not caught.value.retryable
        assert re.fullmatch(
            rf"no space left on {mnt} \(\d+\.\d KiB free\) writing x/big\.bin to the store: "
            rf"free space on {mnt} or point FARM_STORE elsewhere",
            message,
        ), message
        assert not objects.exists("x/big.bin") and temporaries(mnt / "store") == []
        filler.unlink()  # ops frees space: the same put works
        objects.put_file("x/big.bin", big)
        assert objects.get_bytes("x/big.bin") == big.read_bytes()


@needs_root
def test_read_only_store_refuses_writes_and_publishing_and_still_reads(tmp_path):
    """On a store remounted read-only, writes and publishing are one line with the fix; reads still work."""
    with tmpfs(tmp_path / "mnt") as mnt:
        store = ArtifactStore(LocalStore(mnt / "store"), "studio-a")
        src = tmp_path / "episode.mp4"
        src.write_bytes(b"mp4" * 1000)
        blob = store.put_blob(src)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        try:
            with pytest.raises(StoreUnwritable, match=rf"^{mnt} is mounted read-only: cannot write a/b\.json"):
                store.objects.put_bytes("a/b.json", b"{}")
            with pytest.raises(StoreUnwritable, match="remount it read-write or point FARM_STORE elsewhere$"):
                store.publish(blob, "series", "ep001", "episode.mp4")
            assert store.get_blob(blob, tmp_path / "back.mp4").read_bytes() == src.read_bytes()
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
        assert temporaries(mnt / "store") == []


@needs_root
def test_an_action_on_a_full_store_fails_for_good_then_runs_once_space_is_freed(tmp_path):
    """A worker whose outputs cannot be stored fails the action for good with the one line (no retry
    that would run the stage again); once space is freed the same action runs and is recorded."""
    from farm.runtime.execute import execute

    with tmpfs(tmp_path / "mnt") as mnt:
        spec = StoreSpec(url=str(mnt / "store"))
        (mnt / "store").mkdir()
        filler = fill(mnt)
        with pytest.raises(ActionFailed) as caught:
            execute(_noop_action("a" * 64), {}, spec, "acme")
        assert not caught.value.retryable
        assert str(caught.value).startswith(f"clip s01-01: no space left on {mnt} (")
        assert str(caught.value).endswith(f"free space on {mnt} or point FARM_STORE elsewhere")
        assert temporaries(mnt / "store") == []
        filler.unlink()
        manifest = execute(_noop_action("a" * 64), {}, spec, "acme")
        assert ArtifactStore(LocalStore(mnt / "store"), "acme").done_keys() == {manifest["key"]}


@needs_root
def test_an_input_fetched_onto_a_full_scratch_disk_names_tmpdir(tmp_path, monkeypatch):
    """A worker whose scratch disk is full fails the action with the line that says to move TMPDIR."""
    from farm.runtime.execute import execute

    spec = StoreSpec(url=str(tmp_path / "store"))
    store = ArtifactStore(LocalStore(tmp_path / "store"), "acme")
    src = tmp_path / "keyframe.png"
    src.write_bytes(os.urandom(300_000))
    blob = store.put_blob(src)
    with tmpfs(tmp_path / "scratch", size="1m") as scratch_disk:
        monkeypatch.setenv("TMPDIR", str(scratch_disk))
        monkeypatch.setattr("tempfile.tempdir", None)  # read TMPDIR again and make a scratch root
        monkeypatch.setattr("workers.scratch._roots", {})  # there, as a new worker process would
        fill(scratch_disk, leave=100_000)
        with pytest.raises(
            ActionFailed, match=rf"no space left on {scratch_disk} .* point TMPDIR elsewhere$"
        ) as caught:
            execute(_noop_action("b" * 64), {"keyframe": blob.model_dump(mode="json")}, spec, "acme")
        assert not caught.value.retryable
        assert list(scratch_disk.rglob("in-*")) == []


@needs_root
@pytest.mark.ray
@pytest.mark.media
def test_farm_render_onto_a_full_disk_prints_one_line(tmp_path):
    """``farm render`` onto a store that fills up prints one line with the fix, no traceback, exits 1."""
    episode = write_specs(tmp_path / "specs")
    with tmpfs(tmp_path / "mnt") as mnt:
        fill(mnt, leave=150_000)
        env = {**os.environ, "FARM_STORE": str(mnt / "store"), "PYTHONPATH": str(ROOT)}
        run = subprocess.run(
            [sys.executable, "-m", "farm.cli", "render", str(episode), "--quiet", "--num-cpus", "2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert run.returncode == 1, run.stderr
        assert "Traceback" not in run.stderr
        last = run.stderr.strip().splitlines()[-1]
        # the action's blob or the engine's journal, whichever write met the full disk first
        assert last.startswith("farm: failed: ")
        assert f"no space left on {mnt} (" in last
        assert last.endswith(f"free space on {mnt} or point FARM_STORE elsewhere")
        assert temporaries(mnt / "store") == []


def _strace_available() -> str | None:
    if shutil.which("strace") is None:
        return "strace is not installed"
    if subprocess.run(["strace", "-o", os.devnull, "true"], capture_output=True).returncode != 0:
        return "strace cannot trace here (no ptrace permission)"
    return None


def _traced_put(tmp_path: Path, root: Path, durable: bool) -> list[str]:
    """The flushes and renames a put makes, traced for real with strace: ["fsync tmp", "rename a/b", ...]."""
    code = (
        "import sys; from farm.store import LocalStore; "
        f"LocalStore(sys.argv[1]).put_bytes('journal/{int(durable):012d}.jsonl', b'{{}}\\n', durable={durable})"
    )
    log = tmp_path / f"strace-{durable}.log"
    subprocess.run(
        ["strace", "-f", "-e", "trace=openat,rename,renameat,renameat2,fsync,fdatasync", "-o", str(log)]
        + [sys.executable, "-c", code, str(root)],
        check=True,
        cwd=ROOT,
    )
    fds: dict[str, str] = {}  # fd -> path, as the trace goes
    steps: list[str] = []
    for line in log.read_text().splitlines():
        if m := re.search(r'openat\(AT_FDCWD, "([^"]+)", ([^)]*)\) = (\d+)', line):
            if m.group(1).startswith(str(root)):
                fds[m.group(3)] = m.group(1)
        elif m := re.search(r'rename\w*\(.*"([^"]+\.tmp-[0-9a-f]+)".*"([^"]+)"', line):
            steps.append(f"rename {Path(m.group(2)).relative_to(root)}")
        elif (m := re.search(r"f(?:data)?sync\((\d+)\)", line)) and m.group(1) in fds:
            path = Path(fds[m.group(1)])
            steps.append(f"fsync {'tmp' if path.name.startswith('.tmp-') else path.relative_to(root)}")
    return steps


def test_durable_put_flushes_the_file_then_its_folder_after_the_rename(tmp_path):
    """Traced for real: a durable put fsyncs the file, renames it, then fsyncs its folder and the
    folder above the one it made; a put that need not be durable flushes nothing."""
    reason = _strace_available()
    if reason:
        pytest.skip(reason)
    root = tmp_path / "store"
    root.mkdir()
    durable = _traced_put(tmp_path, root, durable=True)
    assert durable == ["fsync tmp", "rename journal/000000000001.jsonl", "fsync journal", "fsync ."]
    assert _traced_put(tmp_path, root, durable=False) == ["rename journal/000000000000.jsonl"]


def _io_written() -> int:
    """Bytes this process has passed to write() and its like so far (/proc/self/io's wchar)."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("wchar:")).split()[1])


def test_publish_links_the_blob_writes_no_bytes_and_keeps_it_immutable(tmp_path):
    """Publishing on a local store hard-links the blob (no byte written again), read-only; publishing
    another blob under the same name replaces the link and leaves the first blob whole."""
    store = ArtifactStore(LocalStore(tmp_path / "store"), "studio-a")
    src = tmp_path / "episode.mp4"
    src.write_bytes(os.urandom(4 << 20))
    blob = store.put_blob(src)
    blob_path = store.objects.path(store._blob_name(blob.digest))
    before = _io_written()
    name = store.publish(blob, "series", "ep001", "episode.mp4")
    written = _io_written() - before
    delivered = store.objects.path(name)
    assert written < 64 << 10, f"publishing wrote {written} bytes"
    assert os.path.samefile(delivered, blob_path) and delivered.stat().st_nlink == 2
    assert delivered.stat().st_mode & 0o222 == 0
    store.publish(blob, "series", "ep001", "episode.mp4")  # again: nothing changes, nothing left over
    assert temporaries(tmp_path / "store") == [] and blob_path.stat().st_nlink == 2
    other = tmp_path / "other.mp4"
    other.write_bytes(b"another cut")
    store.publish(store.put_blob(other), "series", "ep001", "episode.mp4")
    assert store.objects.get_bytes(name) == b"another cut"
    assert file_digest(blob_path) == (blob.digest, blob.size) and blob_path.stat().st_nlink == 1


@needs_root
def test_publish_onto_another_file_system_copies(tmp_path):
    """Where a series' episodes are on another file system (a tmpfs mounted there), publishing copies;
    elsewhere in the same store it still links."""
    store = ArtifactStore(LocalStore(tmp_path / "store"), "studio-a")
    src = tmp_path / "episode.mp4"
    src.write_bytes(os.urandom(100_000))
    blob = store.put_blob(src)
    blob_path = store.objects.path(store._blob_name(blob.digest))
    with tmpfs(tmp_path / "store" / "studio-a" / "episodes" / "elsewhere", size="1m"):
        copied = store.publish(blob, "elsewhere", "ep001", "episode.mp4")
        linked = store.publish(blob, "here", "ep001", "episode.mp4")
        assert store.objects.get_bytes(copied) == src.read_bytes()
        assert not os.path.samefile(store.objects.path(copied), blob_path)
        assert os.path.samefile(store.objects.path(linked), blob_path)
        assert temporaries(tmp_path / "store") == []


_HOLDER = """
import json, sys
from farm.runtime.execute import execute
from farm.settings import StoreSpec
action = json.loads(sys.argv[2])
print(execute(action, {}, StoreSpec(url=sys.argv[1]), "acme")["key"], flush=True)
"""


def _worker(tmp_path: Path, action: dict) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path / "store"), json.dumps(action)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def _roots(tmp_path: Path, pid: int) -> list[Path]:
    return list((tmp_path / "tmp" / f"farm-scratch-{os.getuid()}").glob(f"*-{pid}-*"))


def test_scratch_of_a_killed_worker_is_swept_by_the_next_one(tmp_path):
    """A worker killed with SIGKILL mid-action leaves its scratch under its own root; the next worker
    on the machine removes it, leaves a live worker's alone, and removes its own when it ends."""
    (tmp_path / "tmp").mkdir()
    killed = _worker(tmp_path, _noop_action("c" * 64, sleep_s=60))
    alive = _worker(tmp_path, _noop_action("d" * 64, sleep_s=60))
    try:
        for proc in (killed, alive):
            wait_until(lambda p=proc: [d for r in _roots(tmp_path, p.pid) for d in r.glob("farm-*")], timeout=60)
        [dead_root] = _roots(tmp_path, killed.pid)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert list(dead_root.glob("farm-*")), "the killed worker's scratch is still there before a sweep"
        nxt = _worker(tmp_path, _noop_action("e" * 64))
        out, _ = nxt.communicate(timeout=60)
        assert nxt.returncode == 0 and out.strip().splitlines()[-1] == "e" * 64
        assert not dead_root.exists()
        assert [d for r in _roots(tmp_path, alive.pid) for d in r.glob("farm-*")], "a live worker's scratch was swept"
        assert _roots(tmp_path, nxt.pid) == []  # its action's scratch and its root are gone with it
        assert sorted(p.name for p in (tmp_path / "tmp").iterdir()) == [f"farm-scratch-{os.getuid()}"]
    finally:
        for proc in (killed, alive):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
