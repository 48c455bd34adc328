"""sr4's CPU thread policy: what it decides, that the command line applies it, and that OpenMP sees it."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sr4.utils import threads
from sr4.utils.threads import decide_thread_policy

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_default_is_torch_threads_with_passive_waiting():
    policy = decide_thread_policy(None, {}, torch_loaded=False)
    assert policy.threads is None and policy.source == "torch default"
    assert policy.environment == {"OMP_WAIT_POLICY": "PASSIVE"} and policy.wait_policy == "PASSIVE"


def test_explicit_count_wins_over_the_environment():
    env = {"SR4_THREADS": "3", "OMP_NUM_THREADS": "2"}
    policy = decide_thread_policy(1, env, torch_loaded=False)
    assert (policy.threads, policy.source) == (1, "--threads")
    assert policy.environment["OMP_NUM_THREADS"] == "1"
    policy = decide_thread_policy(None, env, torch_loaded=False)
    assert (policy.threads, policy.source) == (3, "SR4_THREADS")
    assert policy.environment["OMP_NUM_THREADS"] == "3"


def test_users_openmp_settings_are_respected():
    policy = decide_thread_policy(None, {"OMP_NUM_THREADS": "2"}, torch_loaded=False)
    assert (policy.threads, policy.source) == (None, "OMP_NUM_THREADS")
    assert "OMP_NUM_THREADS" not in policy.environment  # torch reads the user's value itself
    for name, value in (("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "10000")):
        policy = decide_thread_policy(None, {name: value}, torch_loaded=False)
        assert policy.wait_policy is None and "OMP_WAIT_POLICY" not in policy.environment


def test_after_torch_is_loaded_only_an_explicit_count_applies():
    policy = decide_thread_policy(None, {}, torch_loaded=True)
    assert policy.environment == {} and policy.threads is None
    policy = decide_thread_policy(2, {}, torch_loaded=True)
    assert policy.threads == 2 and policy.environment == {}  # set through torch.set_num_threads instead


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_bad_counts_name_their_source(value):
    with pytest.raises(ValueError, match="SR4_THREADS must be a positive integer"):
        decide_thread_policy(None, {"SR4_THREADS": value}, torch_loaded=False)
    with pytest.raises(ValueError, match="--threads must be a positive integer"):
        decide_thread_policy(value, {}, torch_loaded=False)


def test_the_command_line_applies_the_policy_before_running(monkeypatch, capsys):
    from sr4.cli import main

    seen = []
    monkeypatch.setattr(threads, "apply_thread_policy", lambda n=None: seen.append(n))
    assert main(["info", "--threads", "3", "--json"]) == 0
    assert seen == [3]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["info", "--threads", "0"])
    assert exc.value.code == 2 and "--threads must be a positive integer" in capsys.readouterr().err


def test_bad_sr4_threads_stops_the_command(monkeypatch, capsys):
    from sr4.cli import main

    monkeypatch.setenv("SR4_THREADS", "many")
    assert main(["info"]) == 2
    assert "SR4_THREADS must be a positive integer, got 'many'" in capsys.readouterr().err


def _openmp_settings(stderr: str) -> dict[str, str]:
    """The variables libgomp prints with OMP_DISPLAY_ENV=TRUE, e.g. {"OMP_WAIT_POLICY": "PASSIVE"}."""
    out = {}
    for line in stderr.splitlines():
        name, sep, value = line.strip().partition(" = ")
        if sep and name.startswith(("OMP_", "GOMP_")):
            out[name] = value.strip("'")
    return out


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "SR4_THREADS")}
    environ.update(PYTHONPATH=SRC, OMP_DISPLAY_ENV="TRUE", **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=300)


@pytest.mark.slow
def test_openmp_runs_with_the_policy_and_user_settings_win():
    code = ("from sr4.utils.threads import apply_thread_policy; apply_thread_policy({n}); import torch; "
            "print(torch.get_num_threads())")
    done = _run(code.format(n=1))
    settings = _openmp_settings(done.stderr)
    if not settings:
        pytest.skip("this torch's OpenMP runtime does not print OMP_DISPLAY_ENV")
    assert done.returncode == 0 and done.stdout.split() == ["1"]
    assert settings["OMP_WAIT_POLICY"] == "PASSIVE" and settings["OMP_NUM_THREADS"] == "1"
    done = _run(code.format(n=None), OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="1")
    assert _openmp_settings(done.stderr)["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.slow
def test_sr4_upscale_runs_with_the_thread_option(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(src)
    code = (f"import sys; from sr4.cli import main; sys.exit(main(['upscale', {str(src)!r}, '-o', "
            f"{str(tmp_path / 'out')!r}, '--model', 'bicubic', '--threads', '1']))")
    done = _run(code)
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "out" / "in.png") as im:
        assert im.size == (40, 48)
    settings = _openmp_settings(done.stderr)
    if settings:
        assert settings["OMP_WAIT_POLICY"] == "PASSIVE" and settings["OMP_NUM_THREADS"] == "1"
