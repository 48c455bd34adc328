"""Training and validation data: HR folders (LR made on the fly) or paired LR/HR folders.

Determinism: the whole sample stream is a function of (seed, global sample number k). Sample k
of the run goes to step k // global_batch; which image it reads and how it is cropped/flipped
comes from RNGs seeded with (seed, k). Nothing depends on the number of DataLoader workers or
DDP ranks, so resuming at step s just restarts the stream at k = s * global_batch, and N ranks
with batch B/N each read exactly the images a single process with batch B reads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from sr4.image.convert import to_float, to_rgb, to_tensor
from sr4.image.files import describe_suffixes, list_images

log = logging.getLogger("sr4.train")

# ---------------------------------------------------------------- image I/O helpers

def training_images(folder: str | Path) -> list[Path]:
    """Every image below `folder` (sub-folders included), as `sr4.image.files.list_images` lists them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: image folder does not exist")
    files = list_images(folder, recursive=True)
    if not files:
        raise FileNotFoundError(f"{folder}: no images ({describe_suffixes()}) found")
    return files


def load_rgb(path: Path) -> np.ndarray:
    """Decode with sr4.image (8/16-bit, EXIF orientation, as inference reads) to float32 HWC RGB
    in [0, 1]; grey is repeated to 3 channels and alpha dropped."""
    from sr4.image.io import read_image

    return to_rgb(to_float(read_image(path).pixels))


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header only."""
    with Image.open(path) as im:
        return im.size


def bicubic_downscale(img: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB-compatible antialiased bicubic downscale by `scale` (HWC float32 -> HWC float32)."""
    from sr4.image.resize import imresize

    return np.ascontiguousarray(np.asarray(imresize(img, 1.0 / scale), dtype=np.float32))


def make_lr(hr: np.ndarray, scale: int, quantize: bool) -> np.ndarray:
    lr = bicubic_downscale(hr, scale)
    if quantize:  # the challenge's LR inputs are 8-bit PNGs
        lr = np.round(np.clip(lr, 0.0, 1.0) * 255.0) / 255.0
    return lr.astype(np.float32)


def augment(arrays: Sequence[np.ndarray], rng: np.random.Generator, hflip: bool, rot90: bool) -> list[np.ndarray]:
    """Same random dihedral transform for all arrays (HWC). Always draws 3 numbers, so the RNG
    stream does not depend on which augmentations are enabled."""
    do_h, do_v, do_t = rng.random(3) < 0.5
    out = []
    for a in arrays:
        if hflip and do_h:
            a = a[:, ::-1]
        if rot90 and do_v:
            a = a[::-1]
        if rot90 and do_t:
            a = a.transpose(1, 0, 2)
        out.append(np.ascontiguousarray(a))
    return out


def _find_lr(hr: Path, lr_dir: Path, scale: int) -> Path:
    for ext in (hr.suffix, ".png"):
        for name in (f"{hr.stem}x{scale}{ext}", f"{hr.stem}{ext}"):
            cand = lr_dir / name
            if cand.is_file():
                return cand
    raise FileNotFoundError(f"{hr}: no LR partner ({hr.stem}x{scale}.png or {hr.stem}.png) in {lr_dir}")


# ---------------------------------------------------------------- datasets

@dataclass(frozen=True)
class Item:
    hr: Path
    lr: Path | None


class TrainDataset(Dataset):
    """Random GT crops from several sources. Indexed by (k, index): k seeds the crop/flip RNG.

    Images that cannot be decoded or are smaller than the crop are skipped: those found by the
    header scan at start-up are dropped (warned and counted in `skipped`); those that fail later
    while decoding are replaced by the next image and reported in the sample's `skipped` list,
    so the trainer (in the main process) can warn once and count them.
    """

    def __init__(self, sources: Sequence, gt_size: int, scale: int, seed: int, hflip: bool = True,
                 rot90: bool = True, lr_quantize: bool = True) -> None:
        self.gt_size, self.scale, self.seed = gt_size, scale, seed
        self.hflip, self.rot90, self.lr_quantize = hflip, rot90, lr_quantize
        self.items: list[Item] = []
        self.sizes: list[int] = []
        self.weights: list[float] = []
        self.skipped: dict[str, str] = {}
        for src in sources:
            hr_files = training_images(src.path)
            lr_dir = Path(src.lr_path) if src.lr_path else None
            kept = 0
            for hr in hr_files:
                reason = self._check(hr)
                if reason:
                    self._skip(hr, reason)
                    continue
                lr = _find_lr(hr, lr_dir, scale) if lr_dir else None
                self.items.append(Item(hr, lr))
                kept += 1
            if kept == 0:
                raise ValueError(f"{src.path}: no usable training image (all {len(hr_files)} skipped)")
            self.sizes.append(kept)
            self.weights.append(float(src.weight))

    def _check(self, path: Path) -> str | None:
        try:
            w, h = image_size(path)
        except Exception as exc:  # noqa: BLE001 - any decoder error means "unusable"
            return f"cannot read image header ({type(exc).__name__}: {exc})"
        if min(w, h) < self.gt_size:
            return f"too small ({w}x{h} < crop {self.gt_size})"
        return None

    def _skip(self, path: Path, reason: str) -> None:
        if str(path) not in self.skipped:
            self.skipped[str(path)] = reason
            log.warning("skipping %s: %s", path, reason)

    def __len__(self) -> int:
        return len(self.items)

    def _load_pair(self, item: Item, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        s, gt = self.scale, self.gt_size
        hr = load_rgb(item.hr)
        if item.lr is None:
            h, w = hr.shape[:2]
            if min(h, w) < gt:
                raise ValueError(f"too small ({w}x{h} < crop {gt})")
            y = int(rng.integers(0, h - gt + 1))
            x = int(rng.integers(0, w - gt + 1))
            hr_c = hr[y:y + gt, x:x + gt]
            hr_c, = augment([hr_c], rng, self.hflip, self.rot90)
            return make_lr(hr_c, s, self.lr_quantize), hr_c
        lr = load_rgb(item.lr)
        lh, lw = lr.shape[:2]
        if hr.shape[0] < lh * s or hr.shape[1] < lw * s:
            raise ValueError(f"HR {hr.shape[1]}x{hr.shape[0]} is smaller than {s}x LR {item.lr} ({lw}x{lh})")
        lg = gt // s
        if min(lh, lw) < lg:
            raise ValueError(f"LR too small ({lw}x{lh} < crop {lg})")
        y = int(rng.integers(0, lh - lg + 1))
        x = int(rng.integers(0, lw - lg + 1))
        lr_c = lr[y:y + lg, x:x + lg]
        hr_c = hr[y * s:(y + lg) * s, x * s:(x + lg) * s]
        lr_c, hr_c = augment([lr_c, hr_c], rng, self.hflip, self.rot90)
        return lr_c, hr_c

    def __getitem__(self, key: tuple[int, int]) -> dict:
        k, index = key
        rng = np.random.default_rng([self.seed, k])
        skipped: list[tuple[str, str]] = []
        n = len(self.items)
        for attempt in range(n):
            item = self.items[(index + attempt) % n]
            try:
                lq, gt = self._load_pair(item, rng)
                break
            except Exception as exc:  # noqa: BLE001 - corrupt data must not kill a 100k-step run
                skipped.append((str(item.hr), f"{type(exc).__name__}: {exc}"))
        else:
            raise RuntimeError(f"no training image could be loaded; last error: {skipped[-1][1]}")
        return {"lq": to_tensor(lq), "gt": to_tensor(gt), "skipped": skipped, "k": k}


def collate(samples: list[dict]) -> dict:
    return {
        "lq": torch.stack([s["lq"] for s in samples]),
        "gt": torch.stack([s["gt"] for s in samples]),
        "skipped": [x for s in samples for x in s["skipped"]],
        "k": [s["k"] for s in samples],
    }


class StepBatchSampler(Sampler):
    """Yields, for each step from `start_step` to `total_steps`, this rank's share of the global
    batch as (k, index) keys. Takes the role of DistributedSampler: rank r gets the contiguous
    slice r of every global batch, so the union over ranks equals the single-process batch.

    Epoch order: a source of n images with weight w contributes round(n * w) draws per epoch
    (weight 1 = each image once, as a plain concatenation; 2 = twice; 0.5 = a random half), its
    images cycled in fresh permutations; then the epoch is shuffled. All seeded by (seed, epoch).
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], global_batch: int, seed: int,
                 total_steps: int, start_step: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if global_batch % world_size:
            raise ValueError(f"batch size {global_batch} is not divisible by the {world_size} DDP processes")
        self.sizes, self.seed = list(sizes), seed
        self.global_batch, self.local_batch = global_batch, global_batch // world_size
        self.total_steps, self.start_step, self.rank = total_steps, start_step, rank
        self.shares = [max(1, round(n * w)) for n, w in zip(self.sizes, weights)]
        self.offsets = np.cumsum([0] + self.sizes[:-1]).tolist()
        self.epoch_len = sum(self.shares)
        self._cache: tuple[int, np.ndarray] | None = None

    def _epoch(self, epoch: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != epoch:
            parts = []
            for d, (size, share, off) in enumerate(zip(self.sizes, self.shares, self.offsets)):
                g = np.random.default_rng([self.seed, epoch, d, 1])
                reps = -(-share // size)
                idx = np.concatenate([g.permutation(size) for _ in range(reps)])[:share]
                parts.append(idx + off)
            order = np.concatenate(parts)
            order = order[np.random.default_rng([self.seed, epoch, 2]).permutation(len(order))]
            self._cache = (epoch, order)
        return self._cache[1]

    def index_of(self, k: int) -> int:
        return int(self._epoch(k // self.epoch_len)[k % self.epoch_len])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.total_steps):
            first = step * self.global_batch + self.rank * self.local_batch
            yield [(k, self.index_of(k)) for k in range(first, first + self.local_batch)]

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)


class ValDataset(Dataset):
    """Whole validation images (or centre crops): HR modcropped to the scale, LR made by bicubic
    or read from `lr_path`."""

    def __init__(self, source, scale: int, crop: int = 0, max_images: int = 0, lr_quantize: bool = True) -> None:
        self.files = training_images(source.path)
        if max_images:
            self.files = self.files[:max_images]
        self.lr_dir = Path(source.lr_path) if source.lr_path else None
        self.scale, self.crop, self.lr_quantize = scale, crop, lr_quantize

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        s, path = self.scale, self.files[i]
        hr = load_rgb(path)
        if self.lr_dir is not None:
            lr = load_rgb(_find_lr(path, self.lr_dir, s))
            hr = hr[: lr.shape[0] * s, : lr.shape[1] * s]
        else:
            h, w = hr.shape[:2]
            if self.crop:
                c = min(self.crop, h, w)
                y, x = (h - c) // 2, (w - c) // 2
                hr = hr[y:y + c, x:x + c]
            h, w = hr.shape[:2]
            hr = hr[: h - h % s, : w - w % s]
            lr = make_lr(hr, s, self.lr_quantize)
        return {"lq": to_tensor(lr), "gt": to_tensor(hr), "name": path.stem}
