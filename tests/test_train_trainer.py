"""Trainer: learning, resume equivalence, atomic checkpoints, official key layout, CLI, DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_data import write_crops

from sr4.training import checkpoint as ckpt_io
from sr4.training.config import config_from_dict
from sr4.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


ROOT = Path(__file__).resolve().parents[1]
TOY_CLI = Path(__file__).with_name("toy_models.py")  # `sr4` with the "conv" test architecture registered


def conv_cfg(tmp_path: Path, **over) -> dict:
    if not (tmp_path / "hr").is_dir():
        write_crops(tmp_path / "hr", 6, size=64)
        write_crops(tmp_path / "val", 2, size=48, offset=20)
    cfg = {
        "mode": "upsampler", "exp_dir": str(tmp_path / "exp"), "seed": 1, "total_steps": 6, "log_every": 2,
        "val_every": 0, "save_every": 0, "progress": False, "device": "cpu",
        "model": {"arch": "conv", "kwargs": {"channels": 8, "blocks": 1}},
        "data": {"train": [{"path": str(tmp_path / "hr")}], "val": {"path": str(tmp_path / "val")},
                 "gt_size": 32, "batch_size": 4, "num_workers": 0},
        "loss": {"l1": 1.0, "lpips": 0.0, "clip": 0.0},
        "optim": {"lr": 2e-3, "ema_decay": 0.9, "scheduler": "multistep", "milestones": [4], "warmup_steps": 2,
                  "grad_clip": 1.0},
    }
    for key, value in over.items():
        node = cfg
        *parts, last = key.split(".")
        for p in parts:
            node = node[p]
        node[last] = value
    return cfg


def fixed_batch(cfg) -> dict:
    from sr4.training.data import TrainDataset, collate

    ds = TrainDataset(cfg.data.train, cfg.data.gt_size, cfg.model.scale, seed=99, hflip=False, rot90=False)
    return collate([ds[(k, k % len(ds))] for k in range(len(ds))])


def test_l1_decreases_on_a_real_image(tmp_path):
    # one 32x32 crop of a real photograph, no augmentation: every step sees the same batch
    write_crops(tmp_path / "one", 1, size=32, offset=3)
    cfg = config_from_dict(conv_cfg(tmp_path, total_steps=40, **{
        "model.kwargs": {"channels": 16, "blocks": 1},
        "data.train": [{"path": str(tmp_path / "one")}], "data.hflip": False, "data.rot90": False,
        "data.batch_size": 1, "optim.milestones": [], "optim.warmup_steps": 0, "optim.lr": 1e-3,
        "optim.grad_clip": 0.0}))
    trainer = Trainer(cfg)
    batch = fixed_batch(cfg)

    def l1() -> float:
        with torch.no_grad():
            return float(torch.nn.functional.l1_loss(trainer.model(batch["lq"]), batch["gt"]))

    before = l1()  # the conv upsampler starts as plain bicubic
    summary = trainer.fit()
    after = l1()
    assert summary["step"] == 40 and summary["losses"]["l1"] == pytest.approx(after, rel=0.1)
    assert after < 0.9 * before, (before, after)


def _weights(exp: Path, name: str = ckpt_io.WEIGHTS) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt_io.find_checkpoint(exp) / name))


def test_resume_is_identical_to_an_uninterrupted_run(tmp_path):
    straight = config_from_dict(conv_cfg(tmp_path, exp_dir=str(tmp_path / "a")))
    Trainer(straight).fit()
    first = config_from_dict(conv_cfg(tmp_path, exp_dir=str(tmp_path / "b"), total_steps=3))
    Trainer(first).fit()
    rest = config_from_dict(conv_cfg(tmp_path, exp_dir=str(tmp_path / "b")))
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        Trainer(rest)
    t = Trainer(rest, resume="auto")
    assert t.step == 3
    t.fit()
    for name in (ckpt_io.WEIGHTS, ckpt_io.EMA_WEIGHTS):
        a, b = _weights(tmp_path / "a", name), _weights(tmp_path / "b", name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    sa = torch.load(ckpt_io.find_checkpoint(tmp_path / "a") / ckpt_io.STATE, weights_only=True)
    sb = torch.load(ckpt_io.find_checkpoint(tmp_path / "b") / ckpt_io.STATE, weights_only=True)
    assert sa["step"] == sb["step"] == 6
    assert sa["optimizer"]["param_groups"][0]["lr"] == sb["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3)
    # a changed config between the two halves would have shown up as different weights
    other = config_from_dict(conv_cfg(tmp_path, exp_dir=str(tmp_path / "c"), seed=2))
    Trainer(other).fit()
    assert not torch.equal(_weights(tmp_path / "c")["conv_first.weight"], _weights(tmp_path / "a")["conv_first.weight"])


def test_crash_while_saving_keeps_latest_complete(tmp_path, monkeypatch):
    cfg = config_from_dict(conv_cfg(tmp_path, total_steps=4, save_every=2))
    trainer = Trainer(cfg)
    real_save = torch.save
    calls = {"n": 0}

    def dying_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the step-4 training state: die after a partial write
            Path(f).write_bytes(b"partial")
            raise KeyboardInterrupt("killed")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    monkeypatch.setattr(torch, "save", real_save)
    exp = Path(cfg.exp_dir)
    assert (exp / "checkpoints" / ckpt_io.LATEST).read_text().strip() == "step_00000002"
    assert not (exp / "checkpoints" / "step_00000004" / ckpt_io.STATE).exists()  # no half file under the real name
    assert not list((exp / "checkpoints" / "step_00000004").glob(".*tmp*"))  # temporary removed
    resumed = Trainer(cfg, resume="auto")
    assert resumed.step == 2
    assert resumed.fit()["step"] == 4


def test_cli_run_writes_experiment_and_refuses_to_overwrite(tmp_path, capsys):
    import yaml

    from sr4.cli import main

    cfg = conv_cfg(tmp_path, total_steps=2, val_every=2, **{"data.max_val_images": 1})
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(cfg_path), "sample_images=1"]) == 0
    exp = Path(cfg["exp_dir"])
    assert "validation sr_psnr=" in capsys.readouterr().out
    saved = yaml.safe_load((exp / "config.yaml").read_text())
    assert saved["sample_images"] == 1 and saved["total_steps"] == 2
    log = (exp / "train.log").read_text()
    assert "step 2" in log and "validation step 2 sr_psnr=" in log
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(exp / "tb"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {"train/l1", "train/total", "lr", "val/sr_psnr", "val/sr_ssim"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/l1")] == [2]
    assert len(tags["images"]) == 1  # sample_images=1: LR | SR | GT strip
    assert main(["train", str(cfg_path)]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main(["train", str(cfg_path), "total_steps=3", "--resume"]) == 0
    assert (exp / "checkpoints" / ckpt_io.LATEST).read_text().strip() == "step_00000003"
    assert main(["train", str(cfg_path), "optim.lr=-1"]) == 2
    assert "optim.lr: must be > 0" in capsys.readouterr().err


def test_corrupt_training_image_is_skipped_and_counted(tmp_path):
    cfg = conv_cfg(tmp_path, total_steps=3)
    hr = tmp_path / "hr"
    good = (hr / "0000.png").read_bytes()
    (hr / "0000.png").write_bytes(good[: len(good) // 2])  # decodes header, fails on pixel data
    (hr / "zzz_bad.jpg").write_bytes(b"\xff\xd8 broken")
    trainer = Trainer(config_from_dict(cfg))
    summary = trainer.fit()
    assert summary["step"] == 3
    assert summary["skipped"] == 2 and any(p.endswith("zzz_bad.jpg") for p in trainer.skipped)
    assert any(p.endswith("0000.png") for p in trainer.skipped)
    state = torch.load(ckpt_io.find_checkpoint(Path(cfg["exp_dir"])) / ckpt_io.STATE, weights_only=True)
    assert len(state["skipped"]) == 2


def test_mambairv2_checkpoint_is_readable_by_load_upsampler(tmp_path):
    from refiner_fixtures import write_tiny_upsampler

    from sr4.models.loading import load_upsampler

    write_tiny_upsampler(tmp_path / "start.pth", seed=3)
    cfg = conv_cfg(tmp_path, total_steps=1, **{"model.arch": "mambairv2", "model.kwargs": {},
                                                "model.checkpoint": str(tmp_path / "start.pth")})
    trainer = Trainer(config_from_dict(cfg))
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    ckpt = ckpt_io.find_checkpoint(Path(cfg["exp_dir"]))
    for name in (ckpt_io.WEIGHTS, ckpt_io.EMA_WEIGHTS):
        net = load_upsampler(ckpt / name)
        assert type(net).__name__ == "MambaIRv2" and net.scale == 4
        loaded = net.state_dict()
        trained = trainer.model.state_dict() if name == ckpt_io.WEIGHTS else trainer.ema.state_dict()
        assert loaded.keys() == trained.keys()
        assert all(torch.equal(loaded[k], trained[k]) for k in loaded)
    assert any(not torch.equal(start[k], loaded[k]) for k in start)  # it did train


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_single_process(tmp_path):
    import yaml

    cfg = conv_cfg(tmp_path, total_steps=4, exp_dir=str(tmp_path / "single"))
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    Trainer(config_from_dict(cfg)).fit()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(TOY_CLI), "train", str(cfg_path), f"exp_dir={tmp_path / 'ddp'}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    # Gradients are summed in another order across ranks; Adam divides by sqrt(v), which turns
    # those float differences in near-zero gradients into up to ~1% of one lr-sized step.
    lr = cfg["optim"]["lr"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=0.01 * lr)
    state = torch.load(ckpt_io.find_checkpoint(tmp_path / "ddp") / ckpt_io.STATE, weights_only=True)
    assert state["world_size"] == 2 and state["step"] == 4


def test_lr_schedules_and_ema_math():
    from sr4.training.config import OptimConfig
    from sr4.training.ema import EMA
    from sr4.training.trainer import lr_lambda

    f = lr_lambda(OptimConfig(scheduler="cosine", warmup_steps=4, min_lr_ratio=0.1), total_steps=14)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine part
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    g = lr_lambda(OptimConfig(scheduler="multistep", milestones=[3, 5], gamma=0.5), total_steps=10)
    assert [g(s) for s in range(7)] == [1, 1, 1, 0.5, 0.5, 0.25, 0.25]

    net = torch.nn.Linear(2, 2)
    ema = EMA(net, 0.9)
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    torch.testing.assert_close(ema.state_dict()["weight"], 0.9 * start + 0.1 * (start + 1.0))
    with pytest.raises(KeyError, match="does not match"):
        ema.load_state_dict({"weight": start})


def test_old_checkpoints_are_pruned_but_latest_kept(tmp_path):
    cfg = config_from_dict(conv_cfg(tmp_path, total_steps=4, save_every=1, keep_checkpoints=2))
    Trainer(cfg).fit()
    root = Path(cfg.exp_dir) / "checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step_00000003", "step_00000004"]
    assert ckpt_io.find_checkpoint(Path(cfg.exp_dir)).name == "step_00000004"
    (root / ckpt_io.LATEST).write_text("step_00000001\n")  # points at a pruned checkpoint
    with pytest.raises(ckpt_io.CheckpointError, match="incomplete or missing"):
        ckpt_io.find_checkpoint(Path(cfg.exp_dir))


def test_arch_mismatch_with_checkpoint_is_reported(tmp_path):
    from refiner_fixtures import write_tiny_upsampler

    from sr4.training.config import ConfigError

    write_tiny_upsampler(tmp_path / "classic.pth")
    cfg = conv_cfg(tmp_path, **{"model.arch": "mambairv2_light", "model.kwargs": {},
                                "model.checkpoint": str(tmp_path / "classic.pth")})
    with pytest.raises(ConfigError, match="mambairv2_light but .*classic.pth holds a MambaIRv2"):
        Trainer(config_from_dict(cfg))


def test_sigterm_saves_and_stops_at_a_step_boundary(tmp_path):
    import signal

    cfg = config_from_dict(conv_cfg(tmp_path, total_steps=6))
    trainer = Trainer(cfg)
    real_step = trainer.train_step

    def step_then_term(batch):
        out = real_step(batch)
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler preempting the job
        return out

    trainer.train_step = step_then_term
    before = signal.getsignal(signal.SIGTERM)
    summary = trainer.fit()
    assert summary["interrupted"] and summary["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored
    assert ckpt_io.find_checkpoint(Path(cfg.exp_dir)).name == "step_00000002"
    assert Trainer(cfg, resume="auto").fit()["step"] == 6


@pytest.mark.slow
def test_sigkill_during_training_leaves_a_loadable_latest(tmp_path):
    import time

    import yaml

    cfg = conv_cfg(tmp_path, total_steps=100000, save_every=1, keep_checkpoints=2, log_every=0)
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(TOY_CLI), "train", str(cfg_path)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = Path(cfg["exp_dir"]) / "checkpoints" / ckpt_io.LATEST
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (latest.is_file() and latest.read_text().strip() >= "step_00000005"):
            time.sleep(0.05)
        time.sleep(0.137)  # land somewhere inside a later step or save
    finally:
        proc.kill()
        proc.wait()
    ckpt = ckpt_io.find_checkpoint(Path(cfg["exp_dir"]))
    weights, ema, state = ckpt_io.load_checkpoint(ckpt)
    assert state["step"] >= 5 and ckpt.name == f"step_{state['step']:08d}"
    assert weights.keys() == ema.keys() and len(weights) > 0
