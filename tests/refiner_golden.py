"""The tiny SNUCV / TSD-SR model folder behind the refiner golden fixtures (tests/data/golden/refiner.json).

`tools/make_refiner_golden.py` runs the official inference code on this folder; the tests rebuild the same
folder from the seed and check the rebuild against the sha256 the tool recorded, so no weights are committed.
Every parameter is drawn from its own generator, seeded from the seed and the parameter's name, so the values
do not depend on how diffusers or sr4 initialise or order their modules. Every value is a float16 number
(SNUCV loads its SD3 parts in float16 before the tool moves them back to float32), so both sides see the
same weights bit for bit.

Shapes are chosen for the official code: SD3 patch size 2 (odd latent sides fail there, as in SD3-medium), a
positional grid of 32 patches (one 64-latent tile), and VAE widths that are multiples of 32 (TSD-SR's tiled VAE
hard-codes 32 GroupNorm groups).
"""

from __future__ import annotations

import hashlib
import math
import zlib
from pathlib import Path

import torch
from torch import nn

GOLDEN_TRANSFORMER = dict(sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                          attention_head_dim=8, num_attention_heads=2, joint_attention_dim=8,
                          caption_projection_dim=16, pooled_projection_dim=8, pos_embed_max_size=32)
GOLDEN_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                  up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[32, 32, 32, 32], layers_per_block=2,
                  latent_channels=16, norm_num_groups=32, scaling_factor=1.5305, shift_factor=0.0609,
                  use_quant_conv=False, use_post_quant_conv=False)
# MambaIRv2 classic x4 with the pixelshuffle head, as SNUCV's stage U (MambaIRv2-B), only smaller.
GOLDEN_MAMBA = dict(upscale=4, in_chans=3, img_size=64, embed_dim=12, d_state=4, depths=[1], num_heads=[2],
                    window_size=8, inner_rank=4, num_tokens=8, convffn_kernel_size=5, mlp_ratio=1.0,
                    img_range=1.0, upsampler="pixelshuffle", resi_connection="1conv")
LORA_RANK = 64  # the rank SNUCV hard-codes (TSD-SR: its --rank default)


def _values(name: str, shape: torch.Size, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    noise = torch.randn(shape, generator=gen, dtype=torch.float32)
    if name.endswith("A_logs"):  # state-space decay rates log(1..N), as MambaIRv2 initialises them
        return torch.log(torch.arange(1, shape[-1] + 1, dtype=torch.float32)).expand(shape) + 0.2 * noise
    if len(shape) < 2:  # norm scales (and MambaIRv2's Ds) around 1, biases and layer scales around 0
        return (1.0 if name.endswith(("weight", "Ds")) else 0.0) + 0.1 * noise
    if "relative_position_bias_table" in name or "embedding" in name.lower() or "route" in name:
        return noise
    fan_in = math.prod(shape[1:])
    return noise / math.sqrt(fan_in)


@torch.no_grad()
def fill_parameters(module: nn.Module, seed: int, *, last_conv_scale: dict[str, float] | None = None) -> nn.Module:
    """Overwrite every parameter with seeded values (float16-representable); returns the module."""
    for name, param in module.named_parameters():
        values = _values(name, param.shape, seed)
        for suffix, factor in (last_conv_scale or {}).items():
            if name.endswith(suffix):
                values = values * factor
        param.copy_(values.half().float())
    return module.eval()


def _lora(model: nn.Module, targets: list[str], seed: int) -> dict[str, torch.Tensor]:
    from refiner_fixtures import targeted_modules

    state = {}
    for name, m in targeted_modules(model, targets).items():
        if isinstance(m, nn.Linear):
            shapes = {"lora_A": (LORA_RANK, m.in_features), "lora_B": (m.out_features, LORA_RANK)}
        else:
            shapes = {"lora_A": (LORA_RANK, m.in_channels, *m.kernel_size), "lora_B": (m.out_channels, LORA_RANK, 1, 1)}
        for part, shape in shapes.items():
            key = f"transformer.{name}.{part}.weight"
            state[key] = (_values(key, torch.Size(shape), seed) * 0.5).half().float().contiguous()
    return state


def write_golden_model_folder(root: Path, seed: int, *, transformer_config: dict | None = None,
                              vae_config: dict | None = None, mamba_config: dict | None = None,
                              prompt_tokens: int = 5, transformer_dtype: torch.dtype = torch.float32) -> Path:
    """Write the folder (SNUCV layout: SD3 transformer/ and vae/, TSD-SR LoRA files, embeddings, U checkpoint).

    The configs default to the golden ones; benchmarks pass the published SD3-medium and MambaIRv2-B
    configurations to get a real-size folder with random weights. `transformer_dtype` float16 builds and stores the
    transformer in half precision (half the memory and disk; the values are float16 numbers either way)."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from refiner_fixtures import OFFICIAL_TRANSFORMER_TARGETS, OFFICIAL_VAE_TARGETS
    from safetensors.torch import save_file

    from sr4.networks.mambairv2 import MambaIRv2

    transformer_config = transformer_config or GOLDEN_TRANSFORMER
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(transformer_dtype)  # this helper runs alone in its process (tests, tools, benchmarks)
    try:
        transformer = fill_parameters(SD3Transformer2DModel(**transformer_config), seed)
    finally:
        torch.set_default_dtype(default_dtype)
    # A quieter decoder output keeps the images away from the clamp, so grey levels stay informative.
    vae = fill_parameters(AutoencoderKL(**(vae_config or GOLDEN_VAE)), seed,
                          last_conv_scale={"decoder.conv_out.weight": 0.3})
    transformer.save_pretrained(root / "transformer", safe_serialization=True)
    vae.save_pretrained(root / "vae", safe_serialization=True)
    save_file(_lora(transformer, OFFICIAL_TRANSFORMER_TARGETS, seed + 1), root / "transformer.safetensors")
    save_file(_lora(vae, OFFICIAL_VAE_TARGETS, seed + 2), root / "vae.safetensors")
    del transformer
    embeds = {"prompt_embeds.pt": (1, prompt_tokens, transformer_config["joint_attention_dim"]),
              "pool_embeds.pt": (1, transformer_config["pooled_projection_dim"])}
    for name, shape in embeds.items():
        torch.save(_values(name, torch.Size(shape), seed + 3).mul(3).half().float(), root / name)
    upsampler = fill_parameters(MambaIRv2(**(mamba_config or GOLDEN_MAMBA)), seed + 4,
                                last_conv_scale={"conv_last.weight": 0.3})
    torch.save({"params": upsampler.state_dict()}, root / "mamba_trained.pth")
    return root


def folder_digest(root: Path) -> str:
    """sha256 over every tensor of the folder (names, shapes, values), independent of file serialisation."""
    from safetensors.torch import load_file

    digest = hashlib.sha256()

    def add(label: str, tensors: dict[str, torch.Tensor]) -> None:
        for key in sorted(tensors):
            t = tensors[key].detach().to(torch.float32).contiguous()
            digest.update(f"{label}/{key}{tuple(t.shape)}".encode())
            digest.update(t.numpy().tobytes())

    root = Path(root)
    for sub in ("transformer", "vae"):
        add(sub, load_file(root / sub / "diffusion_pytorch_model.safetensors"))
    for name in ("transformer.safetensors", "vae.safetensors"):
        add(name, load_file(root / name))
    for name in ("prompt_embeds.pt", "pool_embeds.pt"):
        add(name, {"t": torch.load(root / name, weights_only=True)})
    add("mamba", torch.load(root / "mamba_trained.pth", weights_only=True)["params"])
    return digest.hexdigest()
