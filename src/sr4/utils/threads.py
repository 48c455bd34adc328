"""How sr4's commands use CPU threads: how many, and how idle OpenMP workers wait.

torch runs its CPU ops on OpenMP threads. By default an OpenMP worker that finishes its share of an op
spins, waiting for its peers, before it sleeps. MambaIRv2 is many small ops; when another process keeps a
core busy, a peer thread is often descheduled and every op waits for it while the spinning worker burns the
time slice the peer needed: with torch's default 2 threads on a 2-core machine beside one busy process, a
warm call of the default model took 2.8-4.0 s instead of 0.42 s with one thread
(`benchmarks/bench_threads.py` measures this). With passive waiting (`OMP_WAIT_POLICY=PASSIVE`) idle
workers sleep at once, so all cores help when they are free and cost little when they are not.

The policy `sr4` applies before it imports torch (`apply_thread_policy`, called once by `sr4.cli.main`):
- threads: `--threads N`, else the `SR4_THREADS` environment variable, else whatever the user's environment
  says (`OMP_NUM_THREADS`), else torch's default (one per core the process may run on);
- waiting: `OMP_WAIT_POLICY=PASSIVE`, unless the environment already sets `OMP_WAIT_POLICY` or
  `GOMP_SPINCOUNT`.
OpenMP reads both variables once, when torch loads it; when torch was imported before (sr4's CLI called
from a Python program), only an explicit thread count is applied, with `torch.set_num_threads`. The library
API (`sr4.Upscaler`, `sr4.Pipeline`) never changes the caller's threads.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

ENV_THREADS = "SR4_THREADS"
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


@dataclass(frozen=True)
class ThreadPolicy:
    """What sr4 does with threads: the count it sets (None: left to OMP_NUM_THREADS / torch's default) and
    where the count comes from; the wait policy it sets (None: left to the environment); the environment
    variables to set before torch is imported."""

    threads: int | None
    source: str  # "--threads", "SR4_THREADS", "OMP_NUM_THREADS" or "torch default"
    wait_policy: str | None
    environment: dict[str, str]


def parse_threads(text: str, name: str = ENV_THREADS) -> int:
    """A positive thread count from `text`; ValueError naming `name` otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {text!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {text!r}")
    return value


def decide_thread_policy(threads: int | None, environ: Mapping[str, str], torch_loaded: bool) -> ThreadPolicy:
    """The policy for `--threads` value `threads` in environment `environ` (see the module docstring)."""
    source = "--threads"
    if threads is None and environ.get(ENV_THREADS):
        threads, source = parse_threads(environ[ENV_THREADS]), ENV_THREADS
    elif threads is not None:
        threads = parse_threads(str(threads), "--threads")
    elif environ.get("OMP_NUM_THREADS"):
        source = "OMP_NUM_THREADS"
    else:
        source = "torch default"
    env: dict[str, str] = {}
    if threads is not None and not torch_loaded:
        env["OMP_NUM_THREADS"] = str(threads)
    wait = None
    if not torch_loaded and not any(environ.get(name) for name in WAIT_VARIABLES):
        wait = env["OMP_WAIT_POLICY"] = "PASSIVE"
    return ThreadPolicy(threads, source, wait, env)


def apply_thread_policy(threads: int | None = None) -> ThreadPolicy:
    """Apply sr4's thread policy to this process; `threads` is the `--threads` option (None: not given).

    Call it before torch is imported: OpenMP reads its variables once, when torch loads it. Afterwards only
    an explicit thread count still applies (through `torch.set_num_threads`)."""
    policy = decide_thread_policy(threads, os.environ, "torch" in sys.modules)
    os.environ.update(policy.environment)
    if policy.threads is not None and "torch" in sys.modules:
        import torch

        torch.set_num_threads(policy.threads)
    return policy
