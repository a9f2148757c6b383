"""One writer, fenced: two controller incarnations on one journal (a local store and a real S3 server).
The older cannot write once the newer has opened it, what it managed to write after that is not
history, and an append that failed (a really read-only file system) leaves the journal as it was."""

from __future__ import annotations

import subprocess

import pytest

from farm.core import events as ev
from farm.errors import Fenced, StoreError
from farm.store import LocalStore
from farm.store.journal import StoreJournal

KEY = "b" * 64


def _cancel(batch: str) -> ev.BatchCancelled:
    return ev.BatchCancelled(batch=batch)


def _types(objects) -> list[tuple[int, str | None]]:
    return [(e.seq, e.batch) for e in StoreJournal(objects).replay()]


def test_the_older_incarnation_cannot_write_once_the_newer_opened(objects):
    """After a second controller opened the journal, the first one's append raises Fenced and writes
    nothing; the second one goes on after what it read."""
    old = StoreJournal(objects, writer=True)
    assert list(old.replay()) == []
    old.append([_cancel("b1")], now=1.0)
    new = StoreJournal(objects, writer=True)
    assert [e.batch for e in new.replay()] == ["b1"]
    with pytest.raises(Fenced, match="newer controller"):
        old.append([_cancel("b2")], now=2.0)
    with pytest.raises(Fenced):  # its waiting groups cannot go out either
        old.append([ev.ActionRetry(batch="b1", key=KEY, data=ev.RetryAt(not_before=3.0))], now=3.0)
        old.flush()
    new.append([_cancel("b3")], now=4.0)
    assert _types(objects) == [(0, "b1"), (1, "b3")]
    assert new.epoch is not None and old.epoch is not None and new.epoch > old.epoch


def test_what_a_stale_writer_wrote_after_its_successor_began_is_not_history(objects):
    """A segment that the old incarnation wrote after the new one began (its fence check passed just
    before the claim) is ignored by replay: the new one's first segment of that number wins."""
    old = StoreJournal(objects, writer=True)
    old.append([_cancel("b1")], now=1.0)
    new = StoreJournal(objects, writer=True)
    list(new.replay())
    # the old one's write that raced the claim: its next segment, under its own epoch
    stale = ev.BatchCancelled(batch="stale", seq=1, at=2.0)
    objects.put_bytes(f"_farm/journal/log/000000/000000000001-{old.epoch:08d}.jsonl", (ev.dump(stale) + "\n").encode())
    new.append([_cancel("b3")], now=3.0)
    assert _types(objects) == [(0, "b1"), (1, "b3")]
    assert StoreJournal(objects).events_of("stale") == []


def test_a_journal_that_read_before_another_wrote_is_fenced_at_its_first_write(objects):
    """A journal opened without claiming first (a reader that appends) refuses to write over history it
    never read: another incarnation wrote after its replay."""
    late = StoreJournal(objects)
    assert list(late.replay()) == []
    other = StoreJournal(objects, writer=True)
    list(other.replay())
    other.append([_cancel("b1")], now=1.0)
    with pytest.raises(Fenced, match="after this controller read it"):
        late.append([_cancel("b2")], now=2.0)
    assert _types(objects) == [(0, "b1")]


@pytest.fixture
def small_disk(tmp_path):
    """A real tmpfs of its own, which the test can remount read-only."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if ok.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {ok.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _remount(mnt, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mnt)], check=True)


def test_a_failed_append_leaves_the_journal_exactly_as_before(small_disk):
    """On a really read-only file system a durable append raises; the groups waiting are kept, the
    failed group takes no number, and once the disk is writable again numbering and segments go on
    without a gap (the waiting group and the retried one in one segment)."""
    objects = LocalStore(small_disk / "store")
    j = StoreJournal(objects, writer=True)
    list(j.replay())
    j.append([_cancel("b0")], now=0.5)
    j.append([ev.ActionRetry(batch="b0", key=KEY, data=ev.RetryAt(not_before=2.0))], now=1.0)  # waits
    _remount(small_disk, "ro")
    try:
        with pytest.raises((OSError, StoreError)):  # (the store says what refused the write)
            j.append([_cancel("b1")], now=2.0)
    finally:
        _remount(small_disk, "rw")
    (again,) = j.append([_cancel("b1")], now=3.0)
    assert again.seq == 2
    names = sorted(n.rsplit("/", 1)[-1] for n in objects.list("_farm/journal/log/"))
    assert names == [f"000000000000-{j.epoch:08d}.jsonl", f"000000000001-{j.epoch:08d}.jsonl"]
    assert [(e.seq, e.type) for e in StoreJournal(objects).replay()] == [
        (0, "batch.cancelled"),
        (1, "action.retry"),
        (2, "batch.cancelled"),
    ]
