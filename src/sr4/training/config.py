"""Training configuration: nested dataclasses read from YAML, with `key=value` overrides.

Overrides use dotted paths (`optim.lr=2e-5`, `data.train.0.path=/data/DIV2K`); the value is
parsed as YAML so numbers, booleans, lists and `null` work. Unknown keys and wrong types raise
`ConfigError` naming the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sr4.errors import ConfigError
from sr4.models import REGISTRY, NetworkArchitecture
from sr4.training.init import INITS


@dataclass
class ModelConfig:
    # An architecture of sr4's model registry (`sr4.models`, names matched without case, "_" or "-":
    # "mambairv2", "mambairv2_light"), built with `kwargs` (unknown arguments are an error). With
    # `checkpoint` set, the network is read from that file instead (its architecture must be `arch`).
    arch: str = "mambairv2"
    checkpoint: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    scale: int = 4
    # Start weights without a checkpoint: "random" (the network's own initialisation) or "bicubic_path" (that,
    # with the linear path set to MATLAB bicubic: sr4's bundled model's recipe; sr4.training.init).
    init: str = "random"
    # Recompute U's activations in the backward pass: U's activations are then not held while M
    # runs its forward and backward (peak = max instead of sum), for one extra forward of U.
    gradient_checkpointing: bool = False


@dataclass
class RefinerTrainingConfig:
    """How training uses stage M (the refiner's own options are `sr4.refiner.tsdsr.RefinerConfig`)."""

    # Folder in the SNUCV/TSD-SR layout (transformer/, vae/, LoRA files, prompt embeddings).
    path: str | None = None
    # M's weights and autocast dtype on CUDA ("bf16", "fp16", "fp32"); fp32 on CPU. bf16 by default:
    # gradients flow back through M, and fp16 backward without loss scaling can underflow.
    dtype: str = "bf16"
    # Latent tile size for M; 0 = whole patch in one pass (256 px patches need no tiling).
    tile: int = 0
    # Straight-through 8-bit rounding of U(I) before M, as SNUCV feeds M at inference.
    quantize_ste: bool = True
    # diffusers' per-block activation recomputation in M's transformer and VAE (less memory).
    gradient_checkpointing: bool = False


@dataclass
class SourceConfig:
    path: str = ""
    weight: float = 1.0  # per-image sampling frequency: each image is drawn `weight` times per epoch
    # For paired data: folder of LR images matching the HR names (`0001.png` or `0001x4.png`).
    lr_path: str | None = None


@dataclass
class DataConfig:
    train: list[SourceConfig] = field(default_factory=list)
    val: SourceConfig | None = None
    gt_size: int = 256
    batch_size: int = 4  # global batch: split over DDP ranks
    num_workers: int = 4
    hflip: bool = True
    rot90: bool = True  # vertical flips + transposes: all 8 dihedral transforms with hflip
    # LR made on the fly with MATLAB bicubic (antialiased), then rounded to 8 bits like a PNG.
    lr_quantize: bool = True
    max_val_images: int = 0  # 0 = all
    val_crop: int = 0  # centre crop of HR for validation (0 = whole image); keeps validation cheap


@dataclass
class LossConfig:
    l1: float = 1.0
    # LPIPS on M(U(I)) in through-refiner mode, on U(I) in upsampler mode (0 disables).
    lpips: float = 0.1
    lpips_net: str = "alex"  # LPIPS v0.1 AlexNet (TSD-SR's training loss and the challenge metric)
    lpips_weights: str | None = None  # folder with LPIPS_v0.1_alex-df73285e.pth (+ AlexNet); None = $TORCH_HOME/hub
    clip: float = 0.5
    clip_path: str | None = None  # local folder with a transformers CLIPModel + tokenizer
    clip_pos: str = "Good photo"
    clip_neg: str = "Bad photo"


@dataclass
class OptimConfig:
    lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    eps: float = 1e-8
    scheduler: str = "constant"  # constant | cosine | multistep
    warmup_steps: int = 0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.5
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    grad_clip: float = 0.0  # max global grad norm; 0 disables
    ema_decay: float = 0.999  # 0 disables the EMA copy of U
    ema_start: int = 0


@dataclass
class TrainConfig:
    mode: str = "through-refiner"  # through-refiner | upsampler
    exp_dir: str = "experiments/run"
    seed: int = 0
    total_steps: int = 100_000
    log_every: int = 100
    val_every: int = 5000
    save_every: int = 5000
    keep_checkpoints: int = 3
    sample_images: int = 4  # validation images written to TensorBoard
    device: str = "auto"
    progress: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    refiner: RefinerTrainingConfig = field(default_factory=RefinerTrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


MODES = ("through-refiner", "upsampler")
SCHEDULERS = ("constant", "cosine", "multistep")


# ---------------------------------------------------------------- building from plain data

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a YAML value against a (resolved) annotation; raise ConfigError on mismatch."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: must not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {type(value).__name__} {value!r}")
        return _build(tp, value, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item_tp, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in {prefix}" if prefix else ""
        raise ConfigError(f"unknown key(s){where}: {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


# ---------------------------------------------------------------- overrides

def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node: Any = tree
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit():
                raise ConfigError(f"override {key!r}: {where} indexes a list, use a number")
            idx = int(part)
            if idx > len(node):
                raise ConfigError(f"override {key!r}: list index {idx} out of range (length {len(node)})")
            if idx == len(node):
                node.append({} if not last else None)
            if last:
                node[idx] = value
            else:
                if node[idx] is None:
                    node[idx] = {}
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"override {key!r}: {'.'.join(parts[:i])} is a value, not a mapping or list")


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. optim.lr=2e-5)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key, value


# ---------------------------------------------------------------- validation

def validate(cfg: TrainConfig) -> TrainConfig:
    """Cross-field checks that the type system cannot express."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(cfg.mode in MODES, f"mode: {cfg.mode!r} is not one of {', '.join(MODES)}")
    need(cfg.total_steps > 0, "total_steps: must be > 0")
    for name in ("log_every", "val_every", "save_every"):
        need(getattr(cfg, name) >= 0, f"{name}: must be >= 0 (0 disables)")
    need(cfg.keep_checkpoints >= 1, "keep_checkpoints: must be >= 1")
    need(cfg.model.scale in (2, 3, 4), f"model.scale: {cfg.model.scale} is not 2, 3 or 4")
    trainable = [a.id for a in REGISTRY if isinstance(a, NetworkArchitecture)]
    need(cfg.model.arch in REGISTRY and REGISTRY.get(cfg.model.arch).id in trainable,
         f"model.arch: {cfg.model.arch!r} is not one of {', '.join(trainable)}")
    d = cfg.data
    need(len(d.train) > 0, "data.train: at least one training source (path) is required")
    for i, src in enumerate(d.train):
        need(bool(src.path), f"data.train.{i}.path: empty")
        need(src.weight > 0, f"data.train.{i}.weight: must be > 0, got {src.weight}")
    need(cfg.model.init in INITS, f"model.init: {cfg.model.init!r} is not one of {', '.join(INITS)}")
    need(cfg.model.init == "random" or not cfg.model.checkpoint,
         f"model.init: {cfg.model.init} sets start weights; it cannot be combined with model.checkpoint")
    need(d.gt_size > 0 and d.gt_size % cfg.model.scale == 0,
         f"data.gt_size: {d.gt_size} must be a positive multiple of model.scale={cfg.model.scale}")
    need(d.batch_size > 0, "data.batch_size: must be > 0")
    need(d.num_workers >= 0, "data.num_workers: must be >= 0")
    lo = cfg.loss
    for name in ("l1", "lpips", "clip"):
        need(getattr(lo, name) >= 0, f"loss.{name}: weight must be >= 0")
    need(lo.lpips_net == "alex", f"loss.lpips_net: {lo.lpips_net!r}: only 'alex' is available")
    need(lo.l1 + lo.lpips + lo.clip > 0, "loss: all weights are zero")
    if cfg.mode == "through-refiner":
        need(bool(cfg.refiner.path), "refiner.path: required in through-refiner mode")
        need(lo.clip == 0 or bool(lo.clip_path), "loss.clip_path: required when loss.clip > 0")
    else:
        need(lo.clip == 0, "loss.clip: the CLIP term needs the refiner; set it to 0 in upsampler mode")
    need(cfg.refiner.dtype in ("fp16", "bf16", "fp32"),
         f"refiner.dtype: {cfg.refiner.dtype!r} is not fp16, bf16 or fp32")
    o = cfg.optim
    need(o.lr > 0, "optim.lr: must be > 0")
    need(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
         f"optim.betas: need two values in [0, 1), got {o.betas}")
    need(o.weight_decay >= 0, "optim.weight_decay: must be >= 0")
    need(o.scheduler in SCHEDULERS, f"optim.scheduler: {o.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    need(o.warmup_steps >= 0, "optim.warmup_steps: must be >= 0")
    need(o.grad_clip >= 0, "optim.grad_clip: must be >= 0")
    need(0 <= o.ema_decay < 1, f"optim.ema_decay: must be in [0, 1), got {o.ema_decay}")
    need(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio: must be in [0, 1]")
    return cfg


# ---------------------------------------------------------------- public entry points

def config_from_dict(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    import copy

    tree = copy.deepcopy(data) if data else {}
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    return validate(_build(TrainConfig, tree))


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML training config and apply `key=value` overrides; relative data paths stay as written."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    try:
        return config_from_dict(data, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
