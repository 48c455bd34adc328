"""Training data: determinism, DDP sharding, weighted mixing, paired folders, corrupt images."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from sr4.training.config import SourceConfig
from sr4.training.data import StepBatchSampler, TrainDataset, ValDataset, augment, collate, make_lr


def _photo() -> np.ndarray:
    from skimage import data

    return data.astronaut()  # real 512x512 RGB photograph


def write_crops(folder, n: int, size: int = 96, offset: int = 0) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    img = _photo()
    paths = []
    for i in range(n):
        y, x = (37 * (i + offset)) % (512 - size), (91 * (i + offset)) % (512 - size)
        p = folder / f"{i:04d}.png"
        Image.fromarray(img[y:y + size, x:x + size]).save(p)
        paths.append(p)
    return paths


def batches(ds: TrainDataset, sampler: StepBatchSampler, workers: int) -> list[dict]:
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=collate)
    return list(loader)


def test_stream_is_independent_of_workers_and_resumable(tmp_path):
    write_crops(tmp_path / "hr", 5)
    ds = TrainDataset([SourceConfig(str(tmp_path / "hr"))], gt_size=32, scale=4, seed=3)
    full0 = batches(ds, StepBatchSampler(ds.sizes, ds.weights, 4, 3, total_steps=4), workers=0)
    full2 = batches(ds, StepBatchSampler(ds.sizes, ds.weights, 4, 3, total_steps=4), workers=2)
    tail = batches(ds, StepBatchSampler(ds.sizes, ds.weights, 4, 3, total_steps=4, start_step=2), workers=0)
    assert len(full0) == 4 and full0[0]["gt"].shape == (4, 3, 32, 32) and full0[0]["lq"].shape == (4, 3, 8, 8)
    for a, b in zip(full0, full2):
        assert torch.equal(a["gt"], b["gt"]) and torch.equal(a["lq"], b["lq"])
    for a, b in zip(full0[2:], tail):
        assert torch.equal(a["gt"], b["gt"])
    other = batches(ds, StepBatchSampler(ds.sizes, ds.weights, 4, 4, total_steps=1), workers=0)
    assert not torch.equal(other[0]["gt"], full0[0]["gt"])  # the seed matters


def test_ddp_shards_union_is_the_single_process_batch(tmp_path):
    write_crops(tmp_path / "hr", 6)
    ds = TrainDataset([SourceConfig(str(tmp_path / "hr"))], gt_size=32, scale=4, seed=0)
    single = batches(ds, StepBatchSampler(ds.sizes, ds.weights, 4, 0, total_steps=3), 0)
    r0 = batches(ds, StepBatchSampler(ds.sizes, ds.weights, 4, 0, total_steps=3, rank=0, world_size=2), 0)
    r1 = batches(ds, StepBatchSampler(ds.sizes, ds.weights, 4, 0, total_steps=3, rank=1, world_size=2), 0)
    for s, a, b in zip(single, r0, r1):
        assert torch.equal(s["gt"], torch.cat([a["gt"], b["gt"]]))
    with pytest.raises(ValueError, match="not divisible"):
        StepBatchSampler(ds.sizes, ds.weights, 3, 0, total_steps=1, world_size=2)


def test_epoch_covers_every_image_and_weights_mix_sources():
    s = StepBatchSampler([4, 6], [1.0, 1.0], 2, seed=0, total_steps=10)
    assert sorted(s.index_of(k) for k in range(10)) == list(range(10))  # a permutation per epoch
    w = StepBatchSampler([4, 6], [2.0, 0.5], 2, seed=0, total_steps=10)
    first = [w.index_of(k) for k in range(w.epoch_len)]
    assert w.epoch_len == 11
    assert sorted(i for i in first if i < 4) == [0, 0, 1, 1, 2, 2, 3, 3]  # weight 2: every image twice
    assert len({i for i in first if i >= 4}) == 3  # weight 0.5: half of the 6, without repeats


def test_lr_is_matlab_bicubic_of_the_crop_quantised(tmp_path):
    from sr4.image.resize import imresize

    write_crops(tmp_path / "hr", 1, size=32)
    ds = TrainDataset([SourceConfig(str(tmp_path / "hr"))], gt_size=32, scale=4, seed=0, hflip=False, rot90=False)
    sample = ds[(0, 0)]
    gt = sample["gt"].permute(1, 2, 0).numpy()
    expect = np.round(np.clip(imresize(gt.astype(np.float64), 0.25), 0, 1) * 255) / 255
    np.testing.assert_allclose(sample["lq"].permute(1, 2, 0).numpy(), expect, atol=1e-6)
    assert np.allclose(gt * 255, np.round(gt * 255), atol=1e-4)  # GT pixels are the file's 8-bit values


def test_paired_folders_crop_aligned_regions(tmp_path):
    img = _photo()[:128, :96]
    (tmp_path / "hr").mkdir()
    (tmp_path / "lr").mkdir()
    Image.fromarray(img).save(tmp_path / "hr" / "0001.png")
    # LR = 4x4 block means: commutes with flips and transposes, so alignment survives augmentation
    lr = img.reshape(32, 4, 24, 4, 3).astype(np.float64).mean(axis=(1, 3))
    Image.fromarray(np.round(lr).astype(np.uint8)).save(tmp_path / "lr" / "0001x4.png")
    ds = TrainDataset([SourceConfig(str(tmp_path / "hr"), lr_path=str(tmp_path / "lr"))], gt_size=32, scale=4, seed=1)
    crops = set()
    for k in range(8):
        s = ds[(k, 0)]
        pooled = torch.nn.functional.avg_pool2d(s["gt"][None].double(), 4)[0]
        assert torch.allclose(s["lq"].double(), pooled, atol=0.51 / 255)
        crops.add(s["gt"].numpy().tobytes())
    assert len(crops) > 1


def test_augment_draws_all_eight_dihedral_transforms():
    a = np.arange(2 * 3 * 1, dtype=np.float32).reshape(2, 3, 1)
    seen = {augment([a], np.random.default_rng(i), True, True)[0].tobytes() for i in range(200)}
    assert len(seen) == 8
    plain = {augment([a], np.random.default_rng(i), False, False)[0].tobytes() for i in range(20)}
    assert plain == {a.tobytes()}


def test_corrupt_and_small_images_are_skipped_and_counted(tmp_path, caplog):
    hr = tmp_path / "hr"
    write_crops(hr, 3)
    (hr / "garbage.png").write_bytes(b"not an image at all")
    Image.fromarray(_photo()[:16, :16]).save(hr / "tiny.png")
    good = (hr / "0001.png").read_bytes()
    (hr / "truncated.png").write_bytes(good[: len(good) // 3])  # header fine, pixel data cut
    with caplog.at_level(logging.WARNING, logger="sr4.train"):
        ds = TrainDataset([SourceConfig(str(hr))], gt_size=32, scale=4, seed=0)
    assert set(map(lambda p: p.split("/")[-1], ds.skipped)) == {"garbage.png", "tiny.png"}
    assert "garbage.png" in caplog.text and "too small" in caplog.text
    names = [it.hr.name for it in ds.items]
    t = names.index("truncated.png")
    s = ds[(0, t)]  # falls through to the next image and reports the failure
    assert s["gt"].shape == (3, 32, 32)
    assert len(s["skipped"]) == 1 and s["skipped"][0][0].endswith("truncated.png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TrainDataset([SourceConfig(str(tmp_path / "missing"))], 32, 4, 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        TrainDataset([SourceConfig(str(tmp_path / "empty"))], 32, 4, 0)


def test_val_dataset_modcrops_and_makes_lr(tmp_path):
    from sr4.training.config import SourceConfig as S

    (tmp_path / "val").mkdir()
    Image.fromarray(_photo()[:50, :61]).save(tmp_path / "val" / "a.png")
    ds = ValDataset(S(str(tmp_path / "val")), scale=4)
    s = ds[0]
    assert s["gt"].shape == (3, 48, 60) and s["lq"].shape == (3, 12, 15)
    lr = make_lr(s["gt"].permute(1, 2, 0).numpy(), 4, True)
    np.testing.assert_array_equal(s["lq"].permute(1, 2, 0).numpy(), lr)


def test_sixteen_bit_and_grey_sources_keep_precision(tmp_path):
    from sr4.image.io import ImageData, write_image

    rng = np.random.default_rng(0)
    px16 = rng.integers(0, 65536, size=(40, 40, 3), dtype=np.uint16)
    (tmp_path / "hr").mkdir()
    write_image(tmp_path / "hr" / "deep.png", ImageData(px16))
    Image.fromarray(_photo()[:40, :40, 1]).save(tmp_path / "hr" / "grey.png")
    ds = TrainDataset([SourceConfig(str(tmp_path / "hr"))], gt_size=40, scale=4, seed=0, hflip=False, rot90=False)
    names = [it.hr.name for it in ds.items]
    deep = ds[(0, names.index("deep.png"))]["gt"].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(deep * 65535, px16, atol=0.02)  # not truncated to 8 bits
    grey = ds[(0, names.index("grey.png"))]["gt"]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
