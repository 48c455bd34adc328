"""Tiny random TSD-SR / SNUCV model folders, written in the official file formats.

The LoRA keys are built here from the base model's module names and the official target lists
(not from sr4.refiner.lora), so the loader is tested against an independent reading of the format.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

# The smallest SD3 configs that still run every path (docs/method.md, "Stage M"). Two layers so that the context
# branch (ff_context) exists.
TINY_TRANSFORMER = dict(sample_size=8, patch_size=1, in_channels=16, out_channels=16, num_layers=2,
                        attention_head_dim=4, num_attention_heads=1, joint_attention_dim=8,
                        caption_projection_dim=4, pooled_projection_dim=8, pos_embed_max_size=16)
TINY_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 16, 32, 32], layers_per_block=2,
                latent_channels=16, norm_num_groups=4, scaling_factor=1.5305, shift_factor=0.0609,
                use_quant_conv=False, use_post_quant_conv=False)
# Tiny MambaIRv2 x4 (pixelshuffle head, as classic B): window 8 so 8x8 LR inputs need no padding.
TINY_MAMBA = dict(upscale=4, embed_dim=12, d_state=4, depths=[1], num_heads=[2], window_size=8, inner_rank=4,
                  num_tokens=8, mlp_ratio=1.0, upsampler="pixelshuffle", img_range=1.0, in_chans=3)

OFFICIAL_TRANSFORMER_TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                                "proj", "linear", "proj_out"]
OFFICIAL_VAE_TARGETS = [
    "encoder.conv_in", "encoder.down_blocks.0.resnets.0.conv1", "encoder.down_blocks.0.resnets.0.conv2",
    "encoder.down_blocks.0.resnets.1.conv1", "encoder.down_blocks.0.resnets.1.conv2",
    "encoder.down_blocks.0.downsamplers.0.conv", "encoder.down_blocks.1.resnets.0.conv1",
    "encoder.down_blocks.1.resnets.0.conv2", "encoder.down_blocks.1.resnets.0.conv_shortcut",
    "encoder.down_blocks.1.resnets.1.conv1", "encoder.down_blocks.1.resnets.1.conv2",
    "encoder.down_blocks.1.downsamplers.0.conv", "encoder.down_blocks.2.resnets.0.conv1",
    "encoder.down_blocks.2.resnets.0.conv2", "encoder.down_blocks.2.resnets.0.conv_shortcut",
    "encoder.down_blocks.2.resnets.1.conv1", "encoder.down_blocks.2.resnets.1.conv2",
    "encoder.down_blocks.2.downsamplers.0.conv", "encoder.down_blocks.3.resnets.0.conv1",
    "encoder.down_blocks.3.resnets.0.conv2", "encoder.down_blocks.3.resnets.1.conv1",
    "encoder.down_blocks.3.resnets.1.conv2", "encoder.mid_block.attentions.0.to_q",
    "encoder.mid_block.attentions.0.to_k", "encoder.mid_block.attentions.0.to_v",
    "encoder.mid_block.attentions.0.to_out.0", "encoder.mid_block.resnets.0.conv1",
    "encoder.mid_block.resnets.0.conv2", "encoder.mid_block.resnets.1.conv1", "encoder.mid_block.resnets.1.conv2",
    "encoder.conv_out", "quant_conv"]


def build_tiny_models(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    from diffusers import AutoencoderKL, SD3Transformer2DModel

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(**TINY_TRANSFORMER)
    vae = AutoencoderKL(**TINY_VAE)
    # Random init leaves some weights at zero (e.g. AdaLN, proj_out); perturb all so every path matters.
    with torch.no_grad():
        for p in list(transformer.parameters()) + list(vae.parameters()):
            p.add_(torch.randn_like(p) * 0.05)
    return transformer.eval(), vae.eval()


def targeted_modules(model: nn.Module, targets: list[str]) -> dict[str, nn.Module]:
    """Modules peft's suffix rule selects: name == target or name ends with '.' + target."""
    out = {}
    for name, module in model.named_modules():
        if any(name == t or name.endswith("." + t) for t in targets) and isinstance(module, (nn.Linear, nn.Conv2d)):
            out[name] = module
    return out


def random_lora(model: nn.Module, targets: list[str], rank: int, seed: int, std: float = 0.05
                ) -> dict[str, torch.Tensor]:
    """LoRA weights in TSD-SR's key format for every targeted module."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, m in targeted_modules(model, targets).items():
        if isinstance(m, nn.Linear):
            a_shape, b_shape = (rank, m.in_features), (m.out_features, rank)
        else:
            a_shape, b_shape = (rank, m.in_channels, *m.kernel_size), (m.out_channels, rank, 1, 1)
        state[f"transformer.{name}.lora_A.weight"] = torch.randn(a_shape, generator=g) * std
        state[f"transformer.{name}.lora_B.weight"] = torch.randn(b_shape, generator=g) * std
    return state


def write_tiny_model_folder(root: Path, *, seed: int = 0, rank: int = 4, fp16_weights: bool = False,
                            with_upsampler: bool = True) -> Path:
    """Write a SNUCV-layout folder (docs/method.md, "Model folder") with tiny random models; returns root."""
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    transformer, vae = build_tiny_models(seed)
    variant = "fp16" if fp16_weights else None
    transformer.save_pretrained(root / "transformer", safe_serialization=True, variant=variant)
    vae.save_pretrained(root / "vae", safe_serialization=True, variant=variant)
    save_file(random_lora(transformer, OFFICIAL_TRANSFORMER_TARGETS, rank, seed + 1), root / "transformer.safetensors")
    save_file(random_lora(vae, OFFICIAL_VAE_TARGETS, rank, seed + 2), root / "vae.safetensors")
    g = torch.Generator().manual_seed(seed + 3)
    torch.save(torch.randn(1, 5, TINY_TRANSFORMER["joint_attention_dim"], generator=g), root / "prompt_embeds.pt")
    torch.save(torch.randn(1, TINY_TRANSFORMER["pooled_projection_dim"], generator=g), root / "pool_embeds.pt")
    if with_upsampler:
        write_tiny_upsampler(root / "mamba_trained.pth", seed=seed + 4)
    return root


def tiny_upsampler(seed: int = 0) -> nn.Module:
    from sr4.networks.mambairv2 import MambaIRv2

    torch.manual_seed(seed)
    return MambaIRv2(**TINY_MAMBA).eval()


def write_tiny_upsampler(path: Path, seed: int = 0) -> None:
    net = tiny_upsampler(seed)
    torch.save({"params": net.state_dict()}, path)


@functools.cache
def shared_tiny_model_folder() -> Path:
    """One read-only tiny SNUCV folder per test process (writing it takes seconds); copy it to modify it."""
    root = Path(tempfile.mkdtemp(prefix="sr4_tiny_snucv_"))
    atexit.register(shutil.rmtree, root, True)
    return write_tiny_model_folder(root / "model")
