"""Random-weight checkpoints of other upscaling architectures in their official key formats, and MambaIRv2 ones in
every layout the releases and training tools write, for the spandrel integration tests.

The foreign state dicts are written here from the official repositories' module structure (key names, shapes and
the fixed buffers), not from spandrel's copies of those networks, so that spandrel loading them strictly checks an
independent reading of each format:

- ESRGAN: Real-ESRGAN / BasicSR ``RRDBNet`` (basicsr/archs/rrdbnet_arch.py), as in ``RealESRGAN_x4plus.pth``
  (``{'params_ema': sd}``); x2 and x1 models pixel-unshuffle the input first, so ``conv_first`` takes 12 or 48
  channels.
- Compact: Real-ESRGAN ``SRVGGNetCompact`` (realesrgan/archs/srvgg_arch.py), as in ``realesr-general-x4v3.pth``
  (``{'params': sd}``): ``body`` = conv, PReLU, (conv, PReLU) x num_conv, conv to out * scale^2, pixel shuffle.
- SwinIR: JingyunLiang/SwinIR models/network_swinir.py, classical SR head (``pixelshuffle``, 64 features), as in
  ``001_classicalSR_DF2K_s64w8_SwinIR-M_x4.pth`` (``{'params': sd}``), with the saved ``relative_position_index``
  and shifted-window ``attn_mask`` buffers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from test_mambairv2 import spread_weights

from sr4.networks import MambaIRv2, MambaIRv2Light
from sr4.utils.windows import relative_position_index, shifted_window_mask

REF = Path(__file__).parent / "data" / "mambairv2"
REFERENCE_CONFIGS: dict[str, dict] = {name: entry["hyperparameters"]
                                      for name, entry in json.loads((REF / "configs.json").read_text()).items()}
LAYOUTS = ("params", "params_ema", "bare", "safetensors")


# ----------------------------------------------------------------------------- shapes -> random tensors
# A spec maps each key to (shape, kind); kind picks how `_fill` draws it.


def _conv(spec: dict, name: str, out_ch: int, in_ch: int, k: int = 3) -> None:
    spec[f"{name}.weight"] = ((out_ch, in_ch, k, k), "weight")
    spec[f"{name}.bias"] = ((out_ch,), "bias")


def _linear(spec: dict, name: str, out_f: int, in_f: int) -> None:
    spec[f"{name}.weight"] = ((out_f, in_f), "weight")
    spec[f"{name}.bias"] = ((out_f,), "bias")


def _norm(spec: dict, name: str, dim: int) -> None:
    spec[f"{name}.weight"] = ((dim,), "scale")
    spec[f"{name}.bias"] = ((dim,), "bias")


def _fill(spec: dict[str, tuple[tuple[int, ...], str]], seed: int) -> dict[str, torch.Tensor]:
    """Weights ~ N(0, 1/fan_in) (activations keep their scale through deep stacks), small biases, norm scales
    near 1, PReLU slopes near their usual 0.25: random but well-behaved networks."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, (shape, kind) in spec.items():
        noise = torch.randn(shape, generator=gen)
        if kind == "weight":
            sd[name] = noise / math.prod(shape[1:]) ** 0.5
        elif kind == "bias":
            sd[name] = 0.02 * noise
        elif kind == "scale":
            sd[name] = 1.0 + 0.1 * noise
        elif kind == "slope":
            sd[name] = 0.25 + 0.05 * noise
        else:
            raise ValueError(f"{name}: unknown kind {kind!r}")
    return sd


# ----------------------------------------------------------------------------- foreign architectures


def esrgan_state_dict(scale: int = 4, num_feat: int = 16, num_block: int = 2, seed: int = 0
                      ) -> dict[str, torch.Tensor]:
    """Real-ESRGAN RRDBNet: conv_first, body.<i>.rdb<1-3>.conv<1-5>, conv_body, conv_up1/2 (nearest x2 each),
    conv_hr, conv_last. ``scale`` 4, 2 or 1 (x2/x1 pixel-unshuffle the input by 2/4). The growth width stays
    at the official 32: every released model uses it and loaders (spandrel) assume it."""
    num_grow_ch = 32
    unshuffle = {4: 1, 2: 2, 1: 4}[scale]
    spec: dict[str, tuple[tuple[int, ...], str]] = {}
    _conv(spec, "conv_first", num_feat, 3 * unshuffle**2)
    for i in range(num_block):
        for r in range(1, 4):
            for c in range(1, 5):
                _conv(spec, f"body.{i}.rdb{r}.conv{c}", num_grow_ch, num_feat + (c - 1) * num_grow_ch)
            _conv(spec, f"body.{i}.rdb{r}.conv5", num_feat, num_feat + 4 * num_grow_ch)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        _conv(spec, name, num_feat, num_feat)
    _conv(spec, "conv_last", 3, num_feat)
    return _fill(spec, seed)


def compact_state_dict(scale: int = 4, num_feat: int = 16, num_conv: int = 4, seed: int = 0, channels: int = 3
                       ) -> dict[str, torch.Tensor]:
    """SRVGGNetCompact with PReLU activations; any ``scale`` (the last conv has channels * scale^2 outputs);
    ``channels`` 1 for a grayscale model."""
    spec: dict[str, tuple[tuple[int, ...], str]] = {}
    _conv(spec, "body.0", num_feat, channels)
    spec["body.1.weight"] = ((num_feat,), "slope")
    for i in range(num_conv):
        _conv(spec, f"body.{2 + 2 * i}", num_feat, num_feat)
        spec[f"body.{3 + 2 * i}.weight"] = ((num_feat,), "slope")
    _conv(spec, f"body.{2 + 2 * num_conv}", channels * scale**2, num_feat)
    return _fill(spec, seed)


def swinir_state_dict(scale: int = 4, embed_dim: int = 16, depths: tuple[int, ...] = (2, 2),
                      num_heads: tuple[int, ...] = (2, 2), window_size: int = 8, img_size: int = 16,
                      mlp_ratio: float = 2.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """SwinIR classical SR (pixelshuffle head, resi_connection 1conv, patch_norm, no ape). ``img_size`` (the
    training patch) fixes the shape of the saved shifted-window masks."""
    hidden = int(embed_dim * mlp_ratio)
    spec: dict[str, tuple[tuple[int, ...], str]] = {}
    buffers: dict[str, torch.Tensor] = {}
    _conv(spec, "conv_first", embed_dim, 3)
    _norm(spec, "patch_embed.norm", embed_dim)
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        for j in range(depth):
            block = f"layers.{i}.residual_group.blocks.{j}"
            _norm(spec, f"{block}.norm1", embed_dim)
            spec[f"{block}.attn.relative_position_bias_table"] = (((2 * window_size - 1) ** 2, heads), "bias")
            buffers[f"{block}.attn.relative_position_index"] = relative_position_index(window_size)
            _linear(spec, f"{block}.attn.qkv", 3 * embed_dim, embed_dim)
            _linear(spec, f"{block}.attn.proj", embed_dim, embed_dim)
            _norm(spec, f"{block}.norm2", embed_dim)
            _linear(spec, f"{block}.mlp.fc1", hidden, embed_dim)
            _linear(spec, f"{block}.mlp.fc2", embed_dim, hidden)
            if j % 2:  # odd blocks are shifted by half a window; their mask is a saved buffer
                buffers[f"{block}.attn_mask"] = shifted_window_mask(img_size, img_size, window_size)
        _conv(spec, f"layers.{i}.conv", embed_dim, embed_dim)
    _norm(spec, "norm", embed_dim)
    _conv(spec, "conv_after_body", embed_dim, embed_dim)
    num_feat = 64  # fixed in the official SwinIR
    _conv(spec, "conv_before_upsample.0", num_feat, embed_dim)
    steps = [(9 * num_feat)] if scale == 3 else [4 * num_feat] * int(math.log2(scale))
    for k, out_ch in enumerate(steps):
        _conv(spec, f"upsample.{2 * k}", out_ch, num_feat)
    _conv(spec, "conv_last", 3, num_feat)
    sd = _fill(spec, seed)
    sd.update(buffers)
    return sd


# ----------------------------------------------------------------------------- MambaIRv2


def small_widths(hp: dict) -> dict:
    """A reference configuration with its widths and depths cut (every stage one block, 12 channels, 2 heads) and
    everything that shapes detection kept: stage count, window, head, scale, MLP ratio, FFN kernel, residual."""
    return {**hp, "embed_dim": 12, "depths": [1] * len(hp["depths"]), "num_heads": [2] * len(hp["num_heads"]),
            "d_state": 4, "inner_rank": 4, "num_tokens": 8}


def mambairv2_model(name: str, small: bool = True, seed: int = 0) -> torch.nn.Module:
    """sr4's network for reference configuration ``name`` (``classicSR_Base_x4``, ``lightSR_x2``...), with random
    weights large enough that the routing noise changes the output."""
    hp = REFERENCE_CONFIGS[name]
    cls = MambaIRv2Light if name.startswith("light") else MambaIRv2
    torch.manual_seed(seed)
    return spread_weights(cls(**(small_widths(hp) if small else hp)), seed).eval()


def write_checkpoint(sd: dict[str, torch.Tensor], path: Path, layout: str,
                     training_sd: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``sd`` as the MambaIRv2 releases and BasicSR training do.

    ``params``: ``{'params': sd}`` .pth (the releases, SNUCV's ``mamba_trained.pth``); ``params_ema``: BasicSR with
    EMA, ``{'params': training_sd, 'params_ema': sd}`` (``sd`` is the EMA network, the one to use); ``bare``: the
    state dict itself; ``safetensors``: the state dict as safetensors."""
    if layout == "params":
        torch.save({"params": sd}, path)
    elif layout == "params_ema":
        if training_sd is None:
            raise ValueError("layout 'params_ema' needs training_sd (the non-EMA weights stored beside)")
        torch.save({"params": training_sd, "params_ema": sd}, path)
    elif layout == "bare":
        torch.save(sd, path)
    elif layout == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    return path


def comfyui_read(path: Path) -> dict:
    """What ComfyUI's upscale-model loader hands to spandrel (comfy/utils.py ``load_torch_file(safe_load=True)``):
    safetensors read whole; a .pth through ``torch.load(weights_only=True)``, then the ``state_dict`` entry, or
    the only entry of a one-key dict, or the dict as it is."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in obj:
        return obj["state_dict"]
    if len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
        return next(iter(obj.values()))
    return obj
