"""Atomic, verified file output: write a temporary sibling, check it, fsync it, then publish it.

A reader (or a crash, a signal, a full disk) never sees a half-written file under the final
name: the target either keeps its old content (or stays absent) or holds the complete new one.

* Temporary files are named ``.sr4-tmp-HOST-PID-START-RANDOM.STEM.SUFFIX``: hidden, recognisable
  (`is_temp_name`; sr4's image listings never pick them up) and traceable to the process that
  wrote them, so `sweep_stale_temps` can remove those whose writer is gone (killed with SIGKILL,
  power loss) without touching a live writer's file.
* Publishing without ``replace`` never replaces anything: the temporary file is hard-linked to
  the final name, which fails if a file appeared there in the meantime (another run, the user);
  `OutputExistsError` is raised and the temporary file removed. File systems without hard links
  (FAT, some network shares) fall back to a check just before an ordinary rename.
* Publishing with a predicate as ``replace`` (`sr4.image.marker.written_by_sr4`) replaces only a
  file the predicate accepts: the final name is tried without replacing first, and only when a
  file is there its mark is read and, if accepted, the file renamed over at once. The check looks
  at whatever is under the name at that moment, so a file that appears or is swapped in earlier is
  judged itself. What stays open: a program that puts another file there in the instant between
  that check (a few kilobytes read) and the rename has it replaced; no portable call replaces a
  file only if it is still the one checked.
* `atomic_file` hands the writer a file object without a ``fileno``, so encoders (Pillow's among
  them) write through Python's buffered I/O, which raises on a short write; the size on disk
  after fsync must equal the bytes written before the file is published.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from sr4.errors import NotWrittenBySr4Error, OutputExistsError

#: what publishing may replace: True anything, False nothing, a predicate the files it accepts.
Replace = bool | Callable[[Path], bool]

TEMP_PREFIX = ".sr4-tmp-"
#: `writer_token()` as a pattern: the host tag, pid and start time of the process that made a name.
_WRITER = r"(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-(?P<start>\d+)-"
_TEMP_NAME = re.compile(r"^\.sr4-tmp-" + _WRITER + r"[0-9a-f]{6}\.")
#: temporary files of another machine (shared folders) are swept only when older than this.
FOREIGN_TEMP_AGE_S = 24 * 3600
# errno values meaning "this file system cannot make hard links" (then we re-check and rename).
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV, errno.EMLINK, errno.EACCES}


class ShortWriteError(OSError):
    """The file on disk is shorter or longer than what the encoder produced (full disk, failing device)."""


# ---------------------------------------------------------------------- temporary names


def _host_tag() -> str:
    return hashlib.blake2s(socket.gethostname().encode(), digest_size=3).hexdigest()


def _process_start(pid: int) -> int:
    """Start time of a process in clock ticks since boot (Linux), 0 where unknown.

    Together with the pid it tells a live writer from an unrelated process that reused the pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        return int(stat[stat.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def writer_token() -> str:
    """HOST-PID-START of this process: what sr4's temporary names carry so a later run can tell a live writer."""
    return f"{_host_tag()}-{os.getpid()}-{_process_start(os.getpid())}"


def temp_path_for(target: Path) -> Path:
    """A fresh temporary name next to `target` (not created)."""
    stem = target.stem[:40]  # the final name fits the file system; keep ours well below 255 bytes
    return target.with_name(f"{TEMP_PREFIX}{writer_token()}-{secrets.token_hex(3)}.{stem}{target.suffix}")


def is_temp_name(name: str) -> bool:
    """True for the names of sr4's temporary files (never inputs, never results)."""
    return name.startswith(TEMP_PREFIX)


def _writer_alive(host: str, pid: int, start: int) -> bool | None:
    """Whether the process that made a temporary file still runs; None when it ran on another machine."""
    if host != _host_tag():
        return None
    if pid == os.getpid():
        return True
    if os.name != "posix":  # on Windows os.kill(pid, 0) would send CTRL_C_EVENT: go by age there
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return None
    return not start or _process_start(pid) in (0, start)


def sweep_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove sr4's temporary files in `folder` whose writer is gone; return what was removed.

    A file is stale when the process named in it no longer runs on this machine (or its pid now
    belongs to a process started later), or, for a file made on another machine, when it is older
    than `FOREIGN_TEMP_AGE_S`. Other files, and temporary files of live writers, are left alone.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(os.fspath(folder)))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if m is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            alive = _writer_alive(m["host"], int(m["pid"]), int(m["start"]))
            if alive is None:
                alive = now - entry.stat(follow_symlinks=False).st_mtime < FOREIGN_TEMP_AGE_S
            if not alive:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except FileNotFoundError:
            continue  # its writer published or removed it meanwhile
    return removed


def sweep_stale_folders(parent: str | os.PathLike, prefix: str) -> list[Path]:
    """Remove folders ``PREFIX + writer_token() + ...`` in `parent` whose process is gone on this machine.

    For the temporary folders of long-running commands (`sr4 serve`): a SIGKILL or a power loss leaves them
    behind. Only folders of this machine whose writer is certainly gone are removed; links are never followed.
    """
    import shutil

    pattern = re.compile(re.escape(prefix) + _WRITER)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(os.fspath(parent)))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if m is None or not entry.is_dir(follow_symlinks=False):
            continue
        if _writer_alive(m["host"], int(m["pid"]), int(m["start"])) is False:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


# ---------------------------------------------------------------------- publishing


def _create_temp(target: Path) -> Path:
    for _ in range(100):
        tmp = temp_path_for(target)
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "could not create a unique temporary file", str(target.parent))


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish(tmp: Path, target: Path, *, replace: Replace) -> None:
    """Give the complete file `tmp` the name `target`; `replace` says what existing file it may replace
    (`OutputExistsError` otherwise; `NotWrittenBySr4Error` when a predicate refused it)."""
    if replace is True:
        os.replace(tmp, target)
    elif replace is False:
        _publish_new(tmp, target)
    else:
        try:
            _publish_new(tmp, target)
        except OutputExistsError:
            if not replace(target):
                raise NotWrittenBySr4Error(target) from None
            os.replace(tmp, target)  # right after the check: see the module notes for the instant left open
    _fsync_dir(target.parent)


def _publish_new(tmp: Path, target: Path) -> None:
    """Give `tmp` the name `target` unless something is there (`OutputExistsError`)."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise OutputExistsError(target) from None
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        # No hard links here: check, then rename (os.rename refuses existing targets on Windows).
        if os.path.lexists(target):
            raise OutputExistsError(target) from None
        if os.name == "nt":
            os.rename(tmp, target)
        else:
            os.replace(tmp, target)
    else:
        os.unlink(tmp)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, replace: Replace = True) -> Iterator[Path]:
    """Yield a temporary path next to `target`; when the block ends without error the file is
    fsynced and published as `target` (replacing an existing file as `replace` allows: `publish`).

    The temporary name keeps the target's suffix so writers that pick a format by extension
    (Pillow, torch, safetensors) behave as for the real name. For writers that take a file
    object, `atomic_file` also verifies every byte reached the disk.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(target)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # The temporary file is 0600; give it what a plain open() would (or the old file's mode).
        os.chmod(tmp, _target_mode(target))
        publish(tmp, target, replace=replace)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


class _CheckedFile:
    """A read/write/seek file object without ``fileno``: encoders must write through Python's
    buffered I/O (which raises on short writes), and we keep the highest offset written."""

    def __init__(self, fh: IO[bytes]):
        self._fh = fh
        self.end = 0

    def write(self, data) -> int:  # noqa: ANN001 - bytes-like
        n = self._fh.write(data)
        self.end = max(self.end, self._fh.tell())
        return n

    def read(self, size: int = -1) -> bytes:
        return self._fh.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def flush(self) -> None:
        self._fh.flush()

    def truncate(self, size: int | None = None) -> int:
        n = self._fh.truncate(size)
        self.end = self._fh.tell() if size is None else size
        return n

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._fh.closed


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, *, replace: Replace = True) -> Iterator[_CheckedFile]:
    """Like `atomic_path`, but yield an open binary file; before publishing, the data is flushed
    and fsynced and the size on disk must equal the bytes written (`ShortWriteError` otherwise)."""
    with atomic_path(target, replace=replace) as tmp:
        with open(tmp, "w+b") as raw:
            fh = _CheckedFile(raw)
            yield fh
            raw.flush()
            os.fsync(raw.fileno())
            size = os.fstat(raw.fileno()).st_size
        if size != fh.end:
            raise ShortWriteError(errno.EIO, f"{size} bytes on disk of {fh.end} written (is the disk full?)",
                                  str(target))


def _target_mode(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_current_umask()


def _current_umask() -> int:
    # Linux reports it without changing it (os.umask would set it, racing other threads' file creation).
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def atomic_write_bytes(target: str | os.PathLike, data: bytes, *, replace: bool = True) -> None:
    with atomic_file(target, replace=replace) as fh:
        fh.write(data)


def atomic_write_text(target: str | os.PathLike, text: str, *, replace: bool = True) -> None:
    atomic_write_bytes(target, text.encode("utf-8"), replace=replace)


def probe_writable(folder: str | os.PathLike) -> str | None:
    """Create `folder` if needed and write, fsync and remove one temporary file there.

    Returns None when that works, else the problem in words (for a usage error before any work).
    """
    folder = Path(folder)
    try:
        if folder.exists() and not folder.is_dir():
            return f"{folder}: exists and is not a folder"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = _create_temp(folder / "probe")
        try:
            with open(tmp, "wb") as fh:
                fh.write(b"sr4")
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    except OSError as exc:
        return f"{folder}: cannot write there ({exc.strerror or exc})"
    return None
