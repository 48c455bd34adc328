"""Flags shared by the commands, defined once so a flag means the same everywhere, and their mapping to
`sr4.pipeline.factory.ProcessorOptions` (`processor_options`), the one place flags become processor options.

`-o` / `--output` / `--out` name the output folder of every command that writes one. Only the standard library
is imported here (the commands' parsers are built at every start).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

#: largest --outscale (final size / input size): x4 networks, resized up to 4 times more.
MAX_OUTSCALE = 16.0


def int_at_least(text: str, minimum: int, what: str) -> int:
    """argparse type helper: `text` as an int >= `minimum`, else a usage error naming `what`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, at least {minimum}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return int_at_least(text, 1, "a positive whole number")


def non_negative_int(text: str) -> int:
    return int_at_least(text, 0, "a whole number")


def tile_arg(text: str) -> int | str | None:
    """--tile: "auto", a tile side in pixels, or 0 / "none" for no tiling."""
    if text == "auto":
        return "auto"
    if text == "none":
        return None
    value = int_at_least(text, 0, "'auto' or a tile side in pixels (0: no tiling)")
    return None if value == 0 else value


def outscale_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_OUTSCALE):
        raise argparse.ArgumentTypeError(f"expected a number above 0 and at most {MAX_OUTSCALE:g}, got {text!r}")
    return value


# ----------------------------------------------------------------------------- flags


def add_output(p: argparse.ArgumentParser | Any, *, required: bool, help: str, dest: str = "output",
               **kwargs: Any) -> None:
    """The output folder: -o, --output and --out on every command."""
    p.add_argument("-o", "--output", "--out", dest=dest, required=required, metavar="DIR", help=help, **kwargs)


def add_device(p: argparse.ArgumentParser | Any, help: str = "auto | cpu | cuda:N (default auto)") -> None:
    p.add_argument("--device", default="auto", help=help)


def add_dtype(p: argparse.ArgumentParser | Any) -> None:
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="auto = fp16 on CUDA (when the model runs in it), fp32 on CPU")


def add_tiles(p: argparse.ArgumentParser | Any) -> None:
    p.add_argument("--tile", type=tile_arg, default="auto", metavar="auto|N",
                   help="LR tile size in pixels, 0 (or none) for no tiling, auto from free memory (default)")
    p.add_argument("--tile-overlap", type=non_negative_int, default=16, metavar="N",
                   help="LR pixels tiles share (default 16)")


def add_model(p: argparse.ArgumentParser | Any) -> None:
    """--model, --pipeline, --model-dir: which processor."""
    p.add_argument("--model", metavar="FILE|bicubic", help="upsampler checkpoint (.pth or .safetensors: MambaIRv2 / "
                   "-Light, or with sr4[spandrel] ESRGAN, Compact, SwinIR, HAT, DAT and every other architecture "
                   "spandrel loads), or 'bicubic' for plain bicubic x4; default: sr4's bundled MambaIRv2-Light x4; "
                   "with --pipeline snucv: stage U (any x4 model; default the folder's mamba_trained.pth)")
    p.add_argument("--pipeline", choices=["upsampler", "snucv", "tsdsr"], default="upsampler",
                   help="upsampler: network alone (default); snucv: upsampler then refiner; tsdsr: TSD-SR")
    p.add_argument("--model-dir", metavar="DIR", help="model folder for snucv/tsdsr (SD3 transformer/vae, LoRA, "
                   "prompt embeddings; mamba_trained.pth for snucv)")


def add_alpha(p: argparse.ArgumentParser | Any) -> None:
    p.add_argument("--alpha", choices=["bicubic", "network"], default="bicubic",
                   help="upscale transparency with bicubic (default) or with the network (a second pass)")


def add_refiner(p: argparse.ArgumentParser | Any) -> None:
    """The two-stage pipelines' options (TSD-SR's own flags where it has them)."""
    p.add_argument("--latent", choices=["sample", "mean"], default="sample",
                   help="VAE latent: a seeded sample (official) or the mean")
    p.add_argument("--color-fix", choices=["none", "wavelet", "adain"], default=None,
                   help="colour correction after the refiner (default: none for snucv, wavelet for tsdsr)")
    p.add_argument("--merge-lora", action="store_true",
                   help="merge the LoRA weights into the base weights once (faster; same output within fp error)")
    p.add_argument("--vae-tiling", choices=["auto", "on", "off"], default="auto",
                   help="tile the VAE encode/decode (auto: only above 2048x2048 output)")
    p.add_argument("--vae-tile-stats", choices=["auto", "exact", "fast", "tsdsr"], default="auto",
                   help="VAE tiles: exact (the whole image's GroupNorm statistics; tiles wait in host memory), "
                        "fast (statistics from a 512 px copy; bounded memory), tsdsr (TSD-SR's own tiled VAE, "
                        "to reproduce its --is_use_tile outputs); auto: exact on CUDA, fast on CPU")
    p.add_argument("--vae-encoder-tile", type=positive_int, default=1024, metavar="PX",
                   help="VAE encoder tile in pixels, without its 32 px halo (TSD-SR's --vae_encoder_tiled_size)")
    p.add_argument("--vae-decoder-tile", type=positive_int, default=224, metavar="LATENTS",
                   help="VAE decoder tile in latents, without its 11-latent halo (--vae_decoder_tiled_size)")
    p.add_argument("--latent-tile", type=positive_int, default=64, metavar="LATENTS",
                   help="transformer tile in latents (TSD-SR's --latent_tiled_size, default 64)")
    p.add_argument("--latent-overlap", type=int, default=8, metavar="LATENTS",
                   help="latents neighbouring transformer tiles share (--latent_tiled_overlap, default 8)")
    p.add_argument("--process-size", type=positive_int, default=512, metavar="PX",
                   help="tsdsr: smallest short side the refiner works at (TSD-SR's --process_size, default 512)")
    p.add_argument("--upscale", type=positive_int, default=4, metavar="N",
                   help="tsdsr: upscaling factor (TSD-SR's --upscale, default 4; snucv is x4)")
    p.add_argument("--seed-stream", choices=["image", "run"], default="image",
                   help="image: each image seeded afresh with --seed (default; results do not depend on the "
                        "order); run: seeded once, one random stream across the images in order, as an official "
                        "folder run after one torch.manual_seed")


def add_processor(p: argparse.ArgumentParser, *, title: str = "two-stage pipelines (upsampler + TSD-SR refiner)"
                  ) -> None:
    """Every flag that shapes the processor except --device and --seed (each command words those its way)."""
    add_model(p)
    add_tiles(p)
    add_dtype(p)
    add_alpha(p)
    add_refiner(p.add_argument_group(title))


# ----------------------------------------------------------------------------- flags -> options


def processor_options(args: argparse.Namespace, device: str | None = None) -> Any:
    """The `ProcessorOptions` the flags ask for (a flag a command does not have keeps its default)."""
    from sr4.pipeline.factory import ProcessorOptions

    values: dict[str, Any] = {f.name: getattr(args, f.name, f.default) for f in dataclasses.fields(ProcessorOptions)}
    if device is not None:
        values["device"] = device
    return ProcessorOptions(**values)


def build_processor(args: argparse.Namespace, device: str | None = None) -> Any:
    """The processor (`sr4.pipeline.factory.build_processor`) of the flags `--pipeline`, `--model`, `--model-dir`
    and the processor options."""
    from sr4.pipeline.factory import build_processor as build

    return build(getattr(args, "pipeline", "upsampler"), getattr(args, "model", None),
                 getattr(args, "model_dir", None), processor_options(args, device))
