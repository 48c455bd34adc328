"""Sharded batches: deterministic, disjoint, complete shares; a real 2-process torchrun run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sr4.image.io import read_image, write_image
from sr4.pipeline.sharding import Shard, current_shard, shard_device, shard_items


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_shares_are_disjoint_complete_and_balanced(world: int) -> None:
    items = [f"img{i:03d}.png" for i in range(20)][::-1]  # unsorted on purpose
    shares = [shard_items(items, Shard(rank, world)) for rank in range(world)]
    flat = [x for share in shares for x in share]
    assert sorted(flat) == sorted(items) and len(flat) == len(set(flat))
    sizes = [len(s) for s in shares]
    assert max(sizes) - min(sizes) <= 1
    # Deterministic: depends on the set of items, not on their order.
    assert shares == [shard_items(sorted(items), Shard(rank, world)) for rank in range(world)]


def test_current_shard_from_env() -> None:
    assert current_shard({}) == Shard(0, 1)
    assert current_shard({"RANK": "1", "WORLD_SIZE": "4"}) == Shard(1, 4)
    with pytest.raises(ValueError, match="invalid shard"):
        current_shard({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="not integers"):
        current_shard({"RANK": "x", "WORLD_SIZE": "2"})
    assert shard_device("cpu", {"LOCAL_RANK": "1"}) == "cpu"


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path: Path) -> None:
    src = tmp_path / "in"
    rng = np.random.default_rng(0)
    names = [f"im{i}.png" for i in range(7)]
    for name in names:
        write_image(src / name, rng.integers(0, 256, (6, 5, 3), dtype=np.uint8))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # `python -m torch.distributed.run` is torchrun, with this very interpreter.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "sr4", "upscale", str(src), "-o", str(out), "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Each rank reports its own share: 4 + 3 = 7 images, none twice.
    assert "[rank 0/2] 4 done" in proc.stdout and "[rank 1/2] 3 done" in proc.stdout, proc.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert all(read_image(out / n).size == (20, 24) for n in names)
