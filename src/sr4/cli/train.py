"""`sr4 train CONFIG.yaml [key=value ...] [--resume [PATH] | --auto-resume]`.

Multi-GPU / multi-process: `torchrun --nproc-per-node N -m sr4 train CONFIG.yaml ...` (DDP,
nccl on CUDA, gloo on CPU; data.batch_size is the global batch).
"""

from __future__ import annotations

import argparse
import sys


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="training config (YAML), e.g. configs/snucv_finetune.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="override config keys, dotted for nesting: optim.lr=2e-5 data.train.0.path=/data/DIV2K")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", nargs="?", const="latest", metavar="PATH",
                       help="resume the experiment's latest checkpoint, or the checkpoint/experiment folder PATH "
                            "(write it after CONFIG and the overrides)")
    group.add_argument("--auto-resume", action="store_true",
                       help="resume when the experiment folder holds a checkpoint, else start fresh")
    p.add_argument("--exp-dir", help="experiment folder (same as exp_dir=...)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    from sr4.training.config import ConfigError, dump_config, load_config

    overrides = list(args.overrides)
    if args.exp_dir:
        overrides.append(f"exp_dir={args.exp_dir}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"sr4 train: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0

    from sr4.training.checkpoint import CheckpointError
    from sr4.training.trainer import Trainer, init_distributed

    resume = "auto" if args.auto_resume else None
    if args.resume == "latest":
        resume = cfg.exp_dir
    elif args.resume:
        resume = args.resume
    info, device = init_distributed(cfg.device)
    try:
        trainer = Trainer(cfg, resume=resume, dist_info=info, device=device)
        summary = trainer.fit()
    except (ConfigError, CheckpointError, FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"sr4 train: {exc}", file=sys.stderr)
        return 2
    finally:
        if info.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    if summary.get("interrupted"):
        if info.is_main:
            print(f"stopped by SIGTERM at step {summary['step']}; checkpoint saved in {summary['exp_dir']}; "
                  "continue with --resume", file=sys.stderr)
        return 143
    if info.is_main:
        val = " ".join(f"{k}={v:.4f}" for k, v in summary["val"].items())
        print(f"trained to step {summary['step']} in {summary['exp_dir']}; skipped images: {summary['skipped']}"
              + (f"; validation {val}" if val else ""))
    return 0
