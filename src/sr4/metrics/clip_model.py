"""OpenAI CLIP with the ModifiedResNet image tower, as pyiqa v0.1.13's ``clip_model`` evaluates it.

Only what CLIP-IQA needs: ``encode_image`` (ModifiedResNet + attention pooling) and
``encode_text`` (causal transformer, feature taken at the end-of-text token). Parameter names
follow OpenAI's checkpoints (``visual.layer1.0.conv1.weight``, ``transformer.resblocks.0.attn.
in_proj_weight``, ...), so the state dict inside ``RN50.pt`` loads by name.

``RN50.pt`` is a TorchScript archive (a zip holding pickled module objects and raw tensor
storages). ``torch.jit.load`` would compile the archive's code, and ``torch.load(weights_only=True)``
refuses TorchScript archives, so :func:`read_clip_state_dict` reads ``<archive>/data.pkl`` with a
restricted unpickler that admits only tensor-rebuilding globals and replaces every TorchScript
class by an inert attribute holder; no code from the file is ever run. Plain state dicts saved
with ``torch.save`` (which pyiqa's loader also accepts) are read with ``weights_only=True``.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sr4.metrics.weights import WeightsError, read_state_dict

# ---------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class CLIPConfig:
    """Hyperparameters of a ModifiedResNet CLIP. The defaults are OpenAI's RN50."""

    embed_dim: int = 1024
    image_resolution: int = 224  # only sizes the attention pool's positional embedding
    vision_layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    vision_width: int = 64
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_layers: int = 12

    @property
    def vision_heads(self) -> int:
        return self.vision_width * 32 // 64  # OpenAI: 64 channels per head in the attention pool

    @property
    def text_heads(self) -> int:
        return self.text_width // 64

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], source: str | os.PathLike = "state dict") -> CLIPConfig:
        """Infer the hyperparameters from tensor shapes (as OpenAI's ``build_model`` does)."""
        if "visual.proj" in sd:
            raise WeightsError(f"{source}: a ViT CLIP checkpoint; CLIP-IQA here needs the ResNet (RN50) model")
        needed = ("visual.layer1.0.conv1.weight", "visual.attnpool.positional_embedding", "text_projection",
                  "positional_embedding", "token_embedding.weight", "ln_final.weight")
        absent = [k for k in needed if k not in sd]
        if absent:
            raise WeightsError(f"{source}: not an OpenAI CLIP ResNet checkpoint (no {', '.join(absent)})")
        layers = tuple(
            len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4)
        )
        grid = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        if grid * grid + 1 != sd["visual.attnpool.positional_embedding"].shape[0] or min(layers) == 0:
            raise WeightsError(f"{source}: inconsistent ModifiedResNet tensors (layers {layers})")
        text_layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
        return cls(
            embed_dim=int(sd["text_projection"].shape[1]),
            image_resolution=grid * 32,
            vision_layers=layers,  # type: ignore[arg-type]
            vision_width=int(sd["visual.layer1.0.conv1.weight"].shape[0]),
            context_length=int(sd["positional_embedding"].shape[0]),
            vocab_size=int(sd["token_embedding.weight"].shape[0]),
            text_width=int(sd["ln_final.weight"].shape[0]),
            text_layers=text_layers,
        )


# ---------------------------------------------------------------------------------------------
# image tower


class _FrozenBatchNorm(nn.Module):
    running_mean: torch.Tensor
    running_var: torch.Tensor

    """BatchNorm2d in inference mode (running statistics), without the training counter."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def _pool(stride: int) -> nn.Module:
    # CLIP's anti-aliased downsampling: a 2x2 (stride x stride) average before the 1x1 convolutions.
    return nn.AvgPool2d(stride) if stride > 1 else nn.Identity()


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _FrozenBatchNorm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = _FrozenBatchNorm(planes)
        self.avgpool = _pool(stride)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = _FrozenBatchNorm(out)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != out:
            # "-1" is the key OpenAI gives the parameter-free pool, so the file's 0/1 indices line up.
            self.downsample = nn.Sequential(
                OrderedDict([("-1", _pool(stride)), ("0", nn.Conv2d(inplanes, out, 1, bias=False)),
                             ("1", _FrozenBatchNorm(out))])
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(self.avgpool(y)))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(y + skip)


class _AttentionPool(nn.Module):
    """Multi-head attention whose single query is the mean of the final feature map.

    OpenAI's pool attends with every position as a query but keeps only the output of the mean
    token; computing that one query gives the same result with a fraction of the work.
    """

    def __init__(self, grid: int, channels: int, heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, channels))
        self.q_proj = nn.Linear(channels, channels)
        self.k_proj = nn.Linear(channels, channels)
        self.v_proj = nn.Linear(channels, channels)
        self.c_proj = nn.Linear(channels, output_dim)
        self.heads = heads

    def forward(self, x: torch.Tensor, pos_embedding: bool = False) -> torch.Tensor:
        n, c = x.shape[:2]
        tokens = x.flatten(2).transpose(1, 2)  # (N, HW, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)  # (N, HW+1, C)
        if pos_embedding:
            # pyiqa stretches the (grid^2+1, C) table to the token count with 2-D bicubic
            # interpolation (the channel axis keeps its size, so it is resampled along tokens only).
            table = F.interpolate(self.positional_embedding[None, None], size=(tokens.shape[1], c), mode="bicubic")
            tokens = tokens + table[0, 0].to(tokens.dtype)
        hd = c // self.heads
        q = self.q_proj(tokens[:, :1]).view(n, 1, self.heads, hd).transpose(1, 2)
        k = self.k_proj(tokens).view(n, -1, self.heads, hd).transpose(1, 2)
        v = self.v_proj(tokens).view(n, -1, self.heads, hd).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, 1, hd)
        return self.c_proj(out.transpose(1, 2).reshape(n, c))


class ModifiedResNet(nn.Module):
    """CLIP's ResNet: 3-conv stem with average pooling, anti-aliased strides, attention pooling."""

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        w = cfg.vision_width
        self.conv1 = nn.Conv2d(3, w // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = _FrozenBatchNorm(w // 2)
        self.conv2 = nn.Conv2d(w // 2, w // 2, 3, padding=1, bias=False)
        self.bn2 = _FrozenBatchNorm(w // 2)
        self.conv3 = nn.Conv2d(w // 2, w, 3, padding=1, bias=False)
        self.bn3 = _FrozenBatchNorm(w)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = w
        stages = []
        for i, blocks in enumerate(cfg.vision_layers):
            planes = w * 2**i
            stage = [_Bottleneck(inplanes, planes, 1 if i == 0 else 2)]
            inplanes = planes * _Bottleneck.expansion
            stage += [_Bottleneck(inplanes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.attnpool = _AttentionPool(cfg.image_resolution // 32, w * 32, cfg.vision_heads, cfg.embed_dim)

    def forward(self, x: torch.Tensor, pos_embedding: bool = False) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(F.relu(self.bn3(self.conv3(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x, pos_embedding)


# ---------------------------------------------------------------------------------------------
# text tower


class _CausalSelfAttention(nn.Module):
    """nn.MultiheadAttention's parameter layout (packed q/k/v), with a causal mask."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.zeros(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.view(n, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, width))


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _TextBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = _CausalSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", _QuickGELU()),
                                              ("c_proj", nn.Linear(4 * width, width))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _TextTransformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(*[_TextBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


# ---------------------------------------------------------------------------------------------
# the model


class CLIP(nn.Module):
    """Image and text encoders of a ModifiedResNet CLIP plus its learned logit scale."""

    def __init__(self, cfg: CLIPConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or CLIPConfig()
        self.config = cfg
        self.visual = ModifiedResNet(cfg)
        self.transformer = _TextTransformer(cfg.text_width, cfg.text_layers, cfg.text_heads)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.text_width))
        self.ln_final = nn.LayerNorm(cfg.text_width)
        self.text_projection = nn.Parameter(torch.zeros(cfg.text_width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.zeros(()))

    def encode_image(self, x: torch.Tensor, pos_embedding: bool = False) -> torch.Tensor:
        """(B, 3, H, W) CLIP-normalised images -> (B, embed_dim) (any H, W >= 31)."""
        return self.visual(x, pos_embedding)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(T, L) token ids, zero-padded after the end-of-text token -> (T, embed_dim).

        L may be shorter than the context length: with a causal mask the end-of-text output
        depends only on the tokens up to it, so padding beyond the longest prompt changes nothing.
        """
        if tokens.shape[1] > self.positional_embedding.shape[0]:
            raise ValueError(f"{tokens.shape[1]} tokens exceed the context length {self.positional_embedding.shape[0]}")
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        x = self.ln_final(self.transformer(x))
        # The end-of-text token has the largest id in CLIP's vocabulary, so argmax finds it.
        eot = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return eot @ self.text_projection


# ---------------------------------------------------------------------------------------------
# reading RN50.pt


_STORAGE_DTYPES = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class _ScriptObject:
    """Inert stand-in for a pickled TorchScript module: it only keeps the attributes it was given."""

    def __init__(self) -> None:
        self.attributes: object = None

    def __setstate__(self, state: object) -> None:
        self.attributes = state


def _typed_list(*args: Any) -> list:
    return list(args[0]) if len(args) == 1 else list(args)


def _restore_type_tag(value: object, _type: object = None) -> object:
    return value


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles TorchScript ``data.pkl``: tensors and attribute dicts, nothing executable."""

    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str, source: Path) -> None:
        super().__init__(io.BytesIO(data))
        self.zf, self.prefix, self.source = zf, prefix, source
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> object:
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch.jit._pickle" and name.startswith("build_") and name.endswith("list"):
            return _typed_list
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return _restore_type_tag
        raise pickle.UnpicklingError(f"refusing global {module}.{name}")

    def persistent_load(self, pid: object) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        dtype, key, numel = pid[1], str(pid[2]), int(pid[4])
        if key not in self.storages:
            try:
                raw = self.zf.read(f"{self.prefix}data/{key}")
            except KeyError:
                raise pickle.UnpicklingError(f"storage {key} is missing from the archive") from None
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(raw) < numel * itemsize:
                raise pickle.UnpicklingError(f"storage {key} holds {len(raw)} bytes, needs {numel * itemsize}")
            buf = bytearray(raw[: numel * itemsize])
            self.storages[key] = torch.frombuffer(buf, dtype=dtype) if numel else torch.empty(0, dtype=dtype)
        return self.storages[key]


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_rest: object) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise pickle.UnpicklingError("tensor without a storage")
    return storage.as_strided(tuple(size), tuple(stride), int(offset))


def _flatten(obj: _ScriptObject, prefix: str, out: dict[str, torch.Tensor], seen: set[int]) -> None:
    attributes = getattr(obj, "attributes", None)  # unset when the pickle never BUILDs the object
    if id(obj) in seen or not isinstance(attributes, Mapping):
        return
    seen.add(id(obj))
    for name, value in attributes.items():
        if isinstance(value, torch.Tensor):
            out[prefix + str(name)] = value
        elif isinstance(value, _ScriptObject):
            _flatten(value, f"{prefix}{name}.", out, seen)


def _torchscript_prefix(zf: zipfile.ZipFile) -> str | None:
    names = zf.namelist()
    for n in names:
        parts = n.split("/")
        if len(parts) == 2 and parts[1] == "data.pkl":
            root = parts[0] + "/"
            if any(m.startswith(root + "code/") for m in names) or root + "constants.pkl" in names:
                return root
    return None


def _read_torchscript(zf: zipfile.ZipFile, prefix: str, source: Path) -> dict[str, torch.Tensor]:
    order = zf.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in zf.namelist() else "little"
    if order != "little":
        raise WeightsError(f"{source}: tensors stored {order}-endian; only little-endian archives are supported")
    try:
        root = _RestrictedUnpickler(zf.read(prefix + "data.pkl"), zf, prefix, source).load()
    except (pickle.UnpicklingError, RuntimeError, ValueError, TypeError, EOFError) as exc:
        raise WeightsError(f"{source}: cannot read the TorchScript archive ({type(exc).__name__}: {exc})") from exc
    if not isinstance(root, _ScriptObject):
        raise WeightsError(f"{source}: the TorchScript archive does not hold a module")
    out: dict[str, torch.Tensor] = {}
    _flatten(root, "", out, set())
    return out


def read_clip_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of an OpenAI CLIP checkpoint: a TorchScript archive (``RN50.pt``) or a state dict."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                prefix = _torchscript_prefix(zf)
                if prefix is not None:
                    return _read_torchscript(zf, prefix, path)
        except zipfile.BadZipFile as exc:
            raise WeightsError(f"{path}: damaged zip archive ({exc})") from exc
    return read_state_dict(path)
