"""`sr4.utils.atomic`: recognisable temporary files, no-replace publishing, verified writes, stale-temp sweeping."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sr4.errors import NotWrittenBySr4Error
from sr4.utils import atomic
from sr4.utils.atomic import (
    OutputExistsError,
    ShortWriteError,
    atomic_file,
    atomic_path,
    atomic_write_bytes,
    is_temp_name,
    probe_writable,
    sweep_stale_temps,
)


def _names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_temp_names_are_recognised_and_removed_on_failure(tmp_path: Path) -> None:
    seen = []
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "photo.png") as tmp:
        seen.append(tmp)
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert is_temp_name(seen[0].name) and seen[0].name.endswith(".photo.png") and seen[0].parent == tmp_path
    assert not is_temp_name("photo.png") and not is_temp_name(".photo.png")
    assert _names(tmp_path) == []


@pytest.mark.parametrize("links", [True, False], ids=["hard-link", "no-links-fallback"])
def test_no_replace_publishing_keeps_a_file_that_appeared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          links: bool) -> None:
    if not links:  # a file system without hard links (FAT, some shares): checked just before the rename
        def no_link(src: object, dst: object) -> None:
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(atomic.os, "link", no_link)
    target = tmp_path / "out.png"
    with pytest.raises(OutputExistsError, match="appeared"), atomic_path(target, replace=False) as tmp:
        tmp.write_bytes(b"ours")
        target.write_bytes(b"the user's")  # appears while we write
    assert target.read_bytes() == b"the user's"
    assert _names(tmp_path) == ["out.png"]  # our temporary file is gone
    atomic_write_bytes(tmp_path / "new.png", b"fresh", replace=False)
    assert (tmp_path / "new.png").read_bytes() == b"fresh"
    atomic_write_bytes(target, b"replaced", replace=True)
    assert target.read_bytes() == b"replaced"
    assert _names(tmp_path) == ["new.png", "out.png"]


@pytest.mark.parametrize("links", [True, False])
def test_predicate_publishing_judges_the_file_there_at_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  links: bool) -> None:
    if not links:
        def no_link(src: object, dst: object) -> None:
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(atomic.os, "link", no_link)
    target = tmp_path / "out.png"
    judged: list[bytes] = []

    def ours(path: Path) -> bool:
        judged.append(path.read_bytes())
        return path.read_bytes().startswith(b"sr4")

    atomic_write_bytes(target, b"sr4 first", replace=ours)  # nothing there: published, nothing judged
    assert target.read_bytes() == b"sr4 first" and judged == []
    with pytest.raises(NotWrittenBySr4Error, match="was not written by sr4"), \
            atomic_path(target, replace=ours) as tmp:
        tmp.write_bytes(b"sr4 second")
        target.write_bytes(b"the user's")  # swapped in after any earlier check, while we write
    assert target.read_bytes() == b"the user's" and judged == [b"the user's"]
    assert _names(tmp_path) == ["out.png"]
    target.write_bytes(b"sr4 earlier output")
    atomic_write_bytes(target, b"sr4 third", replace=ours)
    assert target.read_bytes() == b"sr4 third" and _names(tmp_path) == ["out.png"]


def test_size_on_disk_must_equal_bytes_written(tmp_path: Path) -> None:
    with pytest.raises(ShortWriteError, match="10 bytes on disk of 1000"), atomic_file(tmp_path / "a.bin") as fh:
        fh.write(b"x" * 1000)
        fh.flush()
        os.ftruncate(fh._fh.fileno(), 10)  # the device kept less than the encoder produced
    assert _names(tmp_path) == []
    with atomic_file(tmp_path / "b.bin") as fh:  # seeks back and forth (as TIFF writers do) are fine
        fh.write(b"0123456789")
        fh.seek(2)
        fh.write(b"ab")
        fh.seek(0, os.SEEK_END)
        fh.write(b"!")
    assert (tmp_path / "b.bin").read_bytes() == b"01ab456789!"


def test_full_disk_fails_cleanly(full_disk: Path) -> None:
    with pytest.raises(OSError) as info:
        atomic_write_bytes(full_disk / "big.bin", os.urandom(64 * 1024))
    assert info.value.errno in (errno.ENOSPC, errno.EIO)
    assert _names(full_disk) == []


def _temp_of(pid: int, folder: Path, start: int = 0, host: str | None = None) -> Path:
    path = folder / f".sr4-tmp-{host or atomic._host_tag()}-{pid}-{start}-abcdef.photo.png"
    path.write_bytes(b"partial")
    return path


def test_sweep_removes_only_temps_of_dead_writers(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        stale = _temp_of(dead_pid, tmp_path)
        live = _temp_of(alive.pid, tmp_path, atomic._process_start(alive.pid))
        reused = _temp_of(alive.pid, tmp_path, atomic._process_start(alive.pid) + 12345)  # pid now someone else's
        ours = _temp_of(os.getpid(), tmp_path, atomic._process_start(os.getpid()))
        foreign_new = _temp_of(dead_pid, tmp_path, host="0badc0")
        foreign_old = tmp_path / ".sr4-tmp-0badc0-1-0-abcdef.old.png"
        foreign_old.write_bytes(b"x")
        day_ago = time.time() - atomic.FOREIGN_TEMP_AGE_S - 60
        os.utime(foreign_old, (day_ago, day_ago))
        user_files = [tmp_path / ".photo.png", tmp_path / ".sr4-notes.txt", tmp_path / "photo.png"]
        for f in user_files:
            f.write_bytes(b"user")
        removed = sweep_stale_temps(tmp_path)
        assert sorted(removed) == sorted([stale, reused, foreign_old])
        for kept in [live, ours, foreign_new, *user_files]:
            assert kept.exists(), kept
    finally:
        alive.kill()
        alive.wait()


def test_probe_writable(tmp_path: Path, read_only_dir: Path) -> None:
    assert probe_writable(tmp_path / "new" / "sub") is None and (tmp_path / "new" / "sub").is_dir()
    (tmp_path / "file").write_text("x")
    assert "not a folder" in probe_writable(tmp_path / "file")
    assert "cannot write there" in probe_writable(tmp_path / "file" / "sub")
    assert "cannot write there" in probe_writable(read_only_dir)
    assert _names(tmp_path / "new" / "sub") == []
