"""Splitting a batch across processes started by `torchrun --nproc-per-node N`.

Each process reads its rank from the RANK / WORLD_SIZE environment variables torchrun sets and
takes every WORLD_SIZE-th item of the sorted input list, starting at RANK: the shares are
disjoint, their union is the whole list, sizes differ by at most one, and the split depends only
on the list, not on timing. No process group is needed (nothing is exchanged between ranks).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"invalid shard: rank {self.rank} of world size {self.world_size}")

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def __str__(self) -> str:
        return f"rank {self.rank}/{self.world_size}"


def current_shard(env: Mapping[str, str] | None = None) -> Shard:
    """The shard of this process from RANK / WORLD_SIZE (absent: the whole list)."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
    except ValueError:
        raise ValueError(f"RANK={env.get('RANK')!r} / WORLD_SIZE={env.get('WORLD_SIZE')!r} are not integers") from None
    return Shard(rank=rank, world_size=world)


def shard_items(items: Iterable[T], shard: Shard, key: Callable[[T], Any] | None = None) -> list[T]:
    """This shard's share of `items` after sorting them (by `key` when given)."""
    ordered = sorted(items, key=key) if key is not None else sorted(items)  # type: ignore[type-var]
    return ordered[shard.rank::shard.world_size]


def shard_device(device: str, env: Mapping[str, str] | None = None) -> str:
    """'auto' under torchrun with CUDA -> this process's GPU (LOCAL_RANK); anything else unchanged."""
    env = os.environ if env is None else env
    if device == "auto" and "LOCAL_RANK" in env and torch.cuda.is_available():
        return f"cuda:{int(env['LOCAL_RANK']) % torch.cuda.device_count()}"
    return device
