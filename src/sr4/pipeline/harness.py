"""Entry point for the NTIRE 2025 Image SR x4 challenge harness (zhengchen1999/NTIRE2025_ImageSR_x4).

The harness's `test.py` imports `models/<team>/` and calls
`main(model_dir=..., input_path=..., output_path=..., device=...)`. This `main` runs the SNUCV
pipeline on every image of `input_path` (LR files such as `0901x4.png`) and writes each result
under the same name to `output_path`. A package `models/teamXX_sr4/__init__.py` containing
`from sr4.pipeline.harness import main` is all the challenge repository needs.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sr4.image.files import HARNESS_SUFFIXES, list_images


def list_inputs(input_path: str | os.PathLike) -> list[Path]:
    """The LR images the official harness would glob; like its glob, hidden files (sr4's temporary files among
    them) are not inputs."""
    folder = Path(input_path)
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder {str(folder)!r} does not exist or is not a directory")
    return list_images(folder, suffixes=HARNESS_SUFFIXES)


def main(model_dir: str | os.PathLike, input_path: str | os.PathLike, output_path: str | os.PathLike,
         device: str | torch.device | None = None, **options) -> list[Path]:
    """Upscale every image of `input_path` x4 into `output_path` (same file names); returns the outputs.

    device None means CUDA when available, else the CPU. `options` go to `Pipeline.from_model_dir`
    (e.g. pipeline="tsdsr", latent="mean", seed=1); the default is SNUCV's submission: snucv,
    sampled latent, no colour fix, U in one pass whenever it fits in memory. Each image is seeded
    afresh; seed_stream="run" draws from one stream across the folder, as the official `main` does
    after one torch.manual_seed.
    """
    from sr4.pipeline.two_stage import Pipeline

    inputs = list_inputs(input_path)
    out_dir = Path(output_path)
    if out_dir.is_dir() and os.path.samefile(out_dir, input_path):
        raise ValueError(f"output_path {str(out_dir)!r} is the input folder: the results would replace the LR images")
    pipe = Pipeline.from_model_dir(model_dir, device="auto" if device is None else device, **options)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for src in inputs:
        written.append(pipe.process_file(src, out_dir / src.name, overwrite=True))
        if pipe.device.type == "cuda":
            torch.cuda.empty_cache()
    return written
