"""The training loop: U alone, or U through the frozen refiner M (SNUCV), single process or DDP.

Reproducibility: every random draw of step s (data, MambaIRv2's routing noise, M's latent
sample) comes from generators seeded with (seed, s, ...), so resuming from a checkpoint at step
s continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from sr4.image.convert import to_uint8
from sr4.models import REGISTRY
from sr4.models.loading import load_model
from sr4.ops import quantize_8bit_ste
from sr4.training import checkpoint as ckpt_io
from sr4.training.config import ConfigError, ModelConfig, OptimConfig, TrainConfig, dump_config
from sr4.training.data import StepBatchSampler, TrainDataset, ValDataset, collate
from sr4.training.ema import EMA
from sr4.training.init import apply_init
from sr4.training.losses import SRLoss
from sr4.utils.atomic import atomic_write_text
from sr4.utils.device import resolve_device, resolve_dtype

log = logging.getLogger("sr4.train")


def seed_of(*parts: int) -> int:
    """A 63-bit seed mixed from integers (SeedSequence hashing, stable across platforms)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32).astype(np.uint64)
               .dot(np.array([1, 2**31], dtype=np.uint64)))


# ---------------------------------------------------------------- distributed

@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str = "auto") -> tuple[DistInfo, torch.device]:
    """Single process unless launched by torchrun (WORLD_SIZE > 1): then nccl on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world <= 1:
        return DistInfo(), device
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local), device


def _barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


# ---------------------------------------------------------------- building blocks

def build_upsampler(m: ModelConfig) -> nn.Module:
    """U for training, through the model registry: the network in `m.checkpoint` (its architecture must be
    `m.arch`), else `m.arch` built from `m.kwargs` (unknown arguments are a ConfigError naming them)."""
    try:
        arch = REGISTRY.get(m.arch)
    except ConfigError as exc:
        raise ConfigError(f"model.arch: {exc}") from None
    if m.checkpoint:
        descriptor = load_model(m.checkpoint)
        if descriptor.arch.id != arch.id:
            raise ConfigError(f"model.arch={m.arch} but {m.checkpoint} holds a {descriptor.arch.id}")
    else:
        try:
            descriptor = arch.build(**m.kwargs)
        except ConfigError as exc:
            raise ConfigError(f"model.kwargs: {exc}") from None
    if descriptor.scale != m.scale:
        raise ConfigError(f"model.scale={m.scale} but the upsampler is x{descriptor.scale}")
    try:
        apply_init(descriptor.model, m.init)
    except ValueError as exc:
        raise ConfigError(f"model.init: {exc}") from None
    return descriptor.model


def build_refiner(cfg: TrainConfig, device: torch.device) -> nn.Module:
    from sr4.refiner.tsdsr import RefinerConfig, TSDSRRefiner

    r = cfg.refiner
    dtype = resolve_dtype(r.dtype, device) if device.type == "cuda" else torch.float32
    rcfg = RefinerConfig(vae_tiling=False)  # patches are small: the VAE runs whole
    if r.tile:
        rcfg = dataclasses.replace(rcfg, latent_tile=r.tile, latent_overlap=min(8, r.tile // 8))
    assert r.path is not None  # validate() requires it in through-refiner mode
    return TSDSRRefiner.from_model_dir(r.path, device=device, dtype=dtype, config=rcfg)


def build_loss(cfg: TrainConfig) -> SRLoss:
    lo = cfg.loss
    lpips = clip = None
    if lo.lpips > 0:
        from sr4.training.losses import build_lpips

        lpips = build_lpips(lo.lpips_net, lo.lpips_weights)
    if lo.clip > 0:
        from sr4.training.clip_loss import CLIPPromptLoss

        assert lo.clip_path is not None  # validate() requires it when loss.clip > 0
        clip = CLIPPromptLoss(lo.clip_path, lo.clip_pos, lo.clip_neg)
    return SRLoss(lo.l1, lo.lpips, lo.clip, lpips, clip)


def lr_lambda(o: OptimConfig, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.scheduler == "cosine":
            p = min(1.0, (step - o.warmup_steps) / max(1, total_steps - o.warmup_steps))
            return o.min_lr_ratio + (1.0 - o.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
        if o.scheduler == "multistep":
            return o.gamma ** sum(step >= m for m in o.milestones)
        return 1.0

    return factor


# ---------------------------------------------------------------- the trainer

class Trainer:
    """Build with a validated TrainConfig; `fit()` runs to `total_steps` and returns a summary.

    `upsampler` / `refiner` may be passed in (tests, notebooks) instead of being built from the
    config. `resume`: None (fresh run; refuses an experiment that already has checkpoints),
    "auto" (resume when a checkpoint exists), or a path to an experiment or checkpoint folder.
    """

    def __init__(self, cfg: TrainConfig, *, resume: str | None = None, upsampler: nn.Module | None = None,
                 refiner: nn.Module | None = None, dist_info: DistInfo | None = None,
                 device: torch.device | None = None) -> None:
        self.cfg = cfg
        self.dist = dist_info or DistInfo()
        self.device = device or resolve_device(cfg.device)
        self.exp = Path(cfg.exp_dir)
        self.through_refiner = cfg.mode == "through-refiner"
        if cfg.data.batch_size % self.dist.world_size:
            raise ConfigError(f"data.batch_size={cfg.data.batch_size} is not divisible by the "
                              f"{self.dist.world_size} DDP processes")

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank and every run
        self.model = (upsampler if upsampler is not None else build_upsampler(cfg.model)).to(self.device).train()
        self.refiner = None
        if self.through_refiner:
            self.refiner = refiner if refiner is not None else build_refiner(cfg, self.device)
            self.refiner.to(self.device).eval().requires_grad_(False)
            if cfg.refiner.gradient_checkpointing:
                for part in (getattr(self.refiner, "transformer", None), getattr(self.refiner, "vae", None)):
                    if part is not None and hasattr(part, "enable_gradient_checkpointing"):
                        part.enable_gradient_checkpointing()
        self.loss = build_loss(cfg).to(self.device)
        o = cfg.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=o.lr, betas=(o.betas[0], o.betas[1]), eps=o.eps,
                                           weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(o, cfg.total_steps))
        self.ema = EMA(self.model, o.ema_decay) if o.ema_decay > 0 else None
        self.step = 0
        self.skipped: dict[str, str] = {}
        self.last_val: dict[str, float] = {}

        found = self._resolve_resume(resume)
        if found is not None:
            self._load(found)
        self.net: nn.Module = self.model
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)

    # ------------------------------------------------------------ resume
    def _resolve_resume(self, resume: str | None) -> Path | None:
        existing = ckpt_io.find_checkpoint(self.exp) if self.exp.is_dir() else None
        if resume is None:
            if existing is not None:
                raise FileExistsError(f"{self.exp} already holds checkpoints ({existing.name}); "
                                      "resume it (--resume / --auto-resume) or choose another exp_dir")
            return None
        if resume == "auto":
            return existing
        found = ckpt_io.find_checkpoint(resume)
        if found is None:
            raise FileNotFoundError(f"{resume}: no checkpoint to resume from")
        return found

    def _load(self, path: Path) -> None:
        weights, ema, state = ckpt_io.load_checkpoint(path)
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if ema is None:
                self.ema.reset(self.model)
            else:
                self.ema.load_state_dict(ema)
        rng = state.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if self.device.type == "cuda" and rng.get("cuda"):
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.step = int(state["step"])
        if state.get("global_batch", self.cfg.data.batch_size) != self.cfg.data.batch_size:
            log.warning("global batch changed from %s to %s: the data stream will not continue exactly",
                        state["global_batch"], self.cfg.data.batch_size)
        self.skipped.update(state.get("skipped", {}))
        log.info("resumed from %s at step %d", path, self.step)

    def save(self) -> Path | None:
        if not self.dist.is_main:
            return None
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    **({"cuda": torch.cuda.get_rng_state_all()} if self.device.type == "cuda" else {})},
            "global_batch": self.cfg.data.batch_size,
            "world_size": self.dist.world_size,
            "skipped": dict(self.skipped),
        }
        meta = {"arch": self.cfg.model.arch, "scale": str(self.cfg.model.scale), "mode": self.cfg.mode}
        path = ckpt_io.save_checkpoint(self.exp, self.step, self.model.state_dict(), state,
                                       self.ema.state_dict() if self.ema else None, self.cfg.keep_checkpoints, meta)
        log.info("saved checkpoint %s", path)
        return path

    # ------------------------------------------------------------ one step
    def _upsample(self, lq: torch.Tensor, seed: int, net: nn.Module | None = None) -> torch.Tensor:
        net = net or self.net
        device = self.device

        def run(x: torch.Tensor) -> torch.Tensor:
            # A fresh generator per call: the recomputation of gradient checkpointing draws the same noise.
            return net(x, generator=torch.Generator(device=device).manual_seed(seed))

        if self.cfg.model.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(run, lq, use_reentrant=False)
        return run(lq)

    def _refine(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        refiner = self.refiner
        assert refiner is not None  # through-refiner mode
        amp = self.device.type == "cuda" and self.cfg.refiner.dtype != "fp32"
        dtype = resolve_dtype(self.cfg.refiner.dtype, self.device)

        gen = torch.Generator(device="cpu").manual_seed(seed)  # sr4's TSD-SR draws its latent noise on the CPU
        with torch.autocast("cuda", dtype=dtype) if amp else contextlib.nullcontext():
            return refiner(x, generator=gen).float()

    def train_step(self, batch: dict) -> dict[str, float]:
        cfg, step = self.cfg, self.step
        lq = batch["lq"].to(self.device, non_blocking=True)
        gt = batch["gt"].to(self.device, non_blocking=True)
        sr = self._upsample(lq, seed_of(cfg.seed, step, self.dist.rank, 1))
        refined = None
        if self.through_refiner:
            x = quantize_8bit_ste(sr) if cfg.refiner.quantize_ste else sr
            refined = self._refine(x, seed_of(cfg.seed, step, self.dist.rank, 2))
        terms = self.loss(sr, gt, refined)
        if not torch.isfinite(terms.total):
            parts = {k: v.item() for k, v in terms.parts.items()}
            raise FloatingPointError(f"step {step}: loss is not finite ({parts})")
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        out = {k: float(v) for k, v in terms.parts.items()} | {k: float(v) for k, v in terms.extras.items()}
        if cfg.optim.grad_clip > 0:
            out["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip))
        out["lr"] = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            if step + 1 > cfg.optim.ema_start:
                self.ema.update(self.model)
            else:
                self.ema.reset(self.model)
        self.step += 1
        return out

    # ------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, writer=None) -> dict[str, float]:
        from sr4.metrics.psnr_ssim import psnr, ssim

        cfg = self.cfg
        ds = ValDataset(cfg.data.val, cfg.model.scale, cfg.data.val_crop, cfg.data.max_val_images, cfg.data.lr_quantize)
        self.model.eval()
        sums: dict[str, float] = {}
        try:
            for i in range(len(ds)):
                sample = ds[i]
                lq = sample["lq"][None].to(self.device)
                gt = to_uint8(sample["gt"])
                sr_t = self._upsample(lq, seed_of(cfg.seed, i, 3), net=self.model).clamp(0, 1)
                outputs = {"sr": sr_t}
                if self.through_refiner:
                    x = torch.round(sr_t * 255.0) / 255.0
                    outputs["refined"] = self._refine(x, seed_of(cfg.seed, i, 4)).clamp(0, 1)
                for name, t in outputs.items():
                    img = to_uint8(t[0])
                    sums[f"{name}_psnr"] = sums.get(f"{name}_psnr", 0.0) + psnr(img, gt)
                    sums[f"{name}_ssim"] = sums.get(f"{name}_ssim", 0.0) + ssim(img, gt)
                if writer is not None and i < cfg.sample_images:
                    up = F.interpolate(lq, scale_factor=cfg.model.scale, mode="nearest")
                    row = torch.cat([up] + list(outputs.values()) + [sample["gt"][None].to(self.device)], dim=3)
                    writer.add_image(f"val/{sample['name']}", row[0].clamp(0, 1).cpu(), self.step)
        finally:
            self.model.train()
        return {k: v / max(1, len(ds)) for k, v in sums.items()}

    # ------------------------------------------------------------ the loop
    def _loader(self, dataset: TrainDataset) -> torch.utils.data.DataLoader:
        cfg = self.cfg
        sampler = StepBatchSampler(dataset.sizes, dataset.weights, cfg.data.batch_size, cfg.seed, cfg.total_steps,
                                   start_step=self.step, rank=self.dist.rank, world_size=self.dist.world_size)
        return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                                           collate_fn=collate, pin_memory=self.device.type == "cuda")

    def _note_skipped(self, items: list[tuple[str, str]]) -> None:
        for path, reason in items:
            if path not in self.skipped:
                self.skipped[path] = reason
                log.warning("skipping unreadable training image %s: %s", path, reason)

    def fit(self) -> dict:
        cfg, main = self.cfg, self.dist.is_main
        with contextlib.ExitStack() as stack:
            writer_factory = stack.enter_context(_run_logging(self.exp / "train.log" if main else None, main))
            if main:
                self._write_config()
            writer = writer_factory(self.exp / "tb") if main else None
            if writer is not None:
                stack.callback(writer.close)
            stop = stack.enter_context(_sigterm_flag())
            interrupted = False
            dataset = TrainDataset(cfg.data.train, cfg.data.gt_size, cfg.model.scale, cfg.seed, cfg.data.hflip,
                                   cfg.data.rot90, cfg.data.lr_quantize)
            for path, reason in dataset.skipped.items():
                self.skipped.setdefault(path, reason)
            log.info("mode %s, %d training images, %d skipped, start step %d of %d, %d process(es), device %s",
                     cfg.mode, len(dataset), len(self.skipped), self.step, cfg.total_steps, self.dist.world_size,
                     self.device)
            last: dict[str, float] = {}
            saved_at = self.step if self.step else -1
            t0, s0 = time.perf_counter(), self.step
            bar = _progress_bar(self.step, cfg.total_steps) if main and cfg.progress else None
            if bar is not None:  # log lines go above the bar instead of through it
                from tqdm.contrib.logging import logging_redirect_tqdm

                stack.enter_context(logging_redirect_tqdm(loggers=[log]))
            for batch in self._loader(dataset):
                self._note_skipped(batch["skipped"])
                last = self.train_step(batch)
                if main and cfg.log_every and self.step % cfg.log_every == 0:
                    rate = (self.step - s0) / max(1e-9, time.perf_counter() - t0)
                    t0, s0 = time.perf_counter(), self.step
                    self._log_scalars(writer, last, rate)
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save()
                    saved_at = self.step
                if cfg.data.val is not None and cfg.val_every and self.step % cfg.val_every == 0:
                    self._run_validation(writer)
                if bar is not None:
                    bar.set_postfix({k: f"{last[k]:.4f}" for k in ("total", "l1", "lpips", "clip") if k in last},
                                    refresh=False)
                    bar.update(1)
                if self._any_rank(stop.is_set()):
                    log.warning("SIGTERM received: saving step %d and stopping", self.step)
                    interrupted = True
                    break
            if bar is not None:
                bar.close()
            if saved_at != self.step:
                self.save()
            if writer is not None:
                writer.flush()
            _barrier(self.dist)
        return {"step": self.step, "losses": last, "skipped": len(self.skipped), "val": self.last_val,
                "exp_dir": str(self.exp), "interrupted": interrupted}

    def _any_rank(self, flag: bool) -> bool:
        """True when any process has the flag: all ranks must stop at the same step."""
        if self.dist.world_size == 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def _write_config(self) -> None:
        """Keep the resolved config; on resume, note which settings changed since the last run."""
        import yaml

        path, text = self.exp / "config.yaml", dump_config(self.cfg)
        if self.step and path.is_file():
            try:
                old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError:
                old = {}
            new = yaml.safe_load(text)
            changed = sorted(k for k in new if old.get(k) != new[k])
            if changed:
                log.warning("config changed since the previous run of %s: %s", self.exp, ", ".join(changed))
        atomic_write_text(path, text)

    def _log_scalars(self, writer, values: dict[str, float], rate: float) -> None:
        text = " ".join(f"{k}={v:.4g}" for k, v in values.items())
        log.info("step %d %s steps/s=%.3g skipped=%d", self.step, text, rate, len(self.skipped))
        if writer is not None:
            for k, v in values.items():
                writer.add_scalar(f"train/{k}" if k != "lr" else "lr", v, self.step)
            writer.add_scalar("train/steps_per_s", rate, self.step)
            writer.add_scalar("data/skipped", len(self.skipped), self.step)

    def _run_validation(self, writer) -> None:
        if self.dist.is_main:
            metrics = self.validate(writer)
            self.last_val = metrics
            log.info("validation step %d %s", self.step, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            if writer is not None:
                for k, v in metrics.items():
                    writer.add_scalar(f"val/{k}", v, self.step)
        _barrier(self.dist)


# ---------------------------------------------------------------- logging / progress helpers

def _progress_bar(start: int, total: int):
    from tqdm import tqdm

    # tqdm shows steps/s and the ETA; the postfix carries the current losses.
    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, smoothing=0.1)


@contextlib.contextmanager
def _sigterm_flag():
    """While training, SIGTERM (cluster preemption, `kill`) only sets a flag: the loop then saves
    a checkpoint at the end of the current step and returns. Main thread only (signal rule)."""
    import signal
    import threading

    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _run_logging(logfile: Path | None, main: bool):
    """Attach a text log file (and console output) to the sr4.train logger for one run; yield a
    TensorBoard writer factory that degrades to None when tensorboard is missing."""
    handlers: list[logging.Handler] = []
    old_level = log.level
    log.setLevel(logging.INFO if main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    if logfile is not None:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(logfile, encoding="utf-8")
        fh.setFormatter(fmt)
        handlers.append(fh)
    if not log.handlers and not logging.getLogger().handlers:
        sh = logging.StreamHandler()
        sh.setFormatter(fmt)
        handlers.append(sh)
    for h in handlers:
        log.addHandler(h)

    def writer_factory(path: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("tensorboard is not installed: no TensorBoard logs")
            return None
        return SummaryWriter(str(path))

    try:
        yield writer_factory
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        log.setLevel(old_level)
