"""The skip guard of tests/conftest.py: a skipped core test fails the session, an `optional` one does not."""

from pathlib import Path

import pytest

CONFTEST = (Path(__file__).parent / "conftest.py").read_text(encoding="utf-8")
TESTS = '''
import pytest

def test_runs():
    pass

@pytest.mark.slow
def test_slow_runs():
    pass

@pytest.mark.optional
def test_needs_a_gpu():
    pytest.skip("no CUDA device")
'''


@pytest.fixture(autouse=True)
def only_pytest_and_the_guard(monkeypatch):
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # installed plugins (hypothesis...) cost seconds


def run(pytester: pytest.Pytester, extra: str = "", *args: str) -> pytest.RunResult:
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n")
    pytester.makepyfile(test_some=TESTS + extra)
    return pytester.runpytest_inprocess(*args)


def test_optional_skips_are_listed_and_pass(pytester):
    result = run(pytester)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*sr4 skip guard: 1 skipped (0 core), 1 slow tests passed*",
                                 "*1 optional: no CUDA device"])


def test_a_skipped_core_test_fails_the_session(pytester):
    core = "\ndef test_core():\n    pytest.importorskip('no_such_module_here')\n"
    result = run(pytester, core)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*sr4 skip guard: 2 skipped (1 core)*",
                                 "*1 CORE: could not import 'no_such_module_here'*",
                                 "*core tests were skipped: FAILED*"])
    assert run(pytester, core, "--allow-core-skips").ret == pytest.ExitCode.OK


def test_a_module_skipped_at_import_fails_the_session(pytester):
    pytester.makepyfile(test_other="import pytest\npytest.importorskip('no_such_module_here')\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*1 CORE: could not import 'no_such_module_here'*"])
    assert run(pytester, "", "--allow-core-skips").ret == pytest.ExitCode.OK
