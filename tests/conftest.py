import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from threads, and spinning OpenMP threads on a busy shared CPU
    make each step many times slower. Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mount_tmpfs(path, options: str) -> str | None:
    """Mount a tmpfs at `path`; None on success, else why it cannot be done here."""
    import os
    import shutil
    import subprocess

    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        return "mounting a small tmpfs needs root on Linux (CI may run unprivileged)"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    return None if done.returncode == 0 else f"mount -t tmpfs failed here: {done.stderr.strip()}"


def _umount(path) -> None:
    import subprocess

    subprocess.run(["umount", str(path)], capture_output=True)


@pytest.fixture
def full_disk(tmp_path):
    """A 16 KiB tmpfs: files larger than that fail to write (skipped where mounting is not allowed)."""
    path = tmp_path / "full"
    path.mkdir()
    why = _mount_tmpfs(path, "size=16k")
    if why:
        pytest.skip(why)
    yield path
    _umount(path)


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody can write to, root included (a read-only tmpfs; chmod 555 for other users)."""
    import os

    path = tmp_path / "ro"
    path.mkdir()
    if os.name == "posix" and os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    why = _mount_tmpfs(path, "ro,size=16k")
    if why:
        pytest.skip(why)
    yield path
    _umount(path)
