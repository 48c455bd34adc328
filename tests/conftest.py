from collections import Counter

import pytest
import torch
import toy_models

ALLOW_CORE_SKIPS = "--allow-core-skips"
toy_models.register()  # the "conv" test stand-in is a registered architecture for every test
pytest_plugins = ["pytester"]  # for tests/test_skip_guard.py


class SkipGuard:
    """Every test is core unless marked `optional`. A skipped core test, or a test module skipped whole
    at import (importorskip), fails the session: a broken install (no diffusers, no scikit-image) must not
    turn the suite green by skipping the refiner or the metrics. `optional` is for tests that need what a
    CPU machine lacks (CUDA, mamba_ssm). The end of the run lists every skip with its reason."""

    def __init__(self, config):
        self.config = config
        self.skips: list[tuple[str, bool, str]] = []  # (node id, core, reason)

    @staticmethod
    def _reason(report) -> str:
        longrepr = report.longrepr
        text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        return text.removeprefix("Skipped: ")

    def pytest_collectreport(self, report):
        if report.skipped:
            self.skips.append((report.nodeid, True, self._reason(report)))

    def pytest_runtest_logreport(self, report):
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skips.append((report.nodeid, "optional" not in report.keywords, self._reason(report)))

    def core_skips(self) -> int:
        return sum(core for _, core, _ in self.skips)

    def pytest_sessionfinish(self, session, exitstatus):
        if self.core_skips() and exitstatus == pytest.ExitCode.OK and not self.config.getoption(ALLOW_CORE_SKIPS):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        slow = sum(1 for r in terminalreporter.stats.get("passed", []) if r.when == "call" and "slow" in r.keywords)
        terminalreporter.write_sep(
            "-", f"sr4 skip guard: {len(self.skips)} skipped ({self.core_skips()} core), {slow} slow tests passed")
        for (core, reason), n in sorted(Counter((core, reason) for _, core, reason in self.skips).items()):
            terminalreporter.write_line(f"{n:5d} {'CORE' if core else 'optional'}: {reason}")
        if self.core_skips():
            verdict = "reported only (--allow-core-skips)" if self.config.getoption(ALLOW_CORE_SKIPS) else "FAILED"
            terminalreporter.write_line(f'core tests were skipped: {verdict} (pip install -e ".[dev]")', red=True)


def pytest_addoption(parser):
    parser.addoption(ALLOW_CORE_SKIPS, action="store_true",
                     help="list skipped core tests without failing the session (for partial installs)")


def pytest_configure(config):
    config.addinivalue_line("markers", "optional: may be skipped without failing the suite (needs CUDA or mamba_ssm)")
    config.pluginmanager.register(SkipGuard(config), "sr4-skip-guard")


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
