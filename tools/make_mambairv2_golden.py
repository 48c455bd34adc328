"""Write golden MambaIRv2 fixtures by running the OFFICIAL architecture code on CPU.

Usage: python tools/make_mambairv2_golden.py OFFICIAL_REPO [--out tests/data/golden]

OFFICIAL_REPO is a checkout of csguoh/MambaIR (only ``basicsr/archs/mambairv2_arch.py`` and
``basicsr/archs/mambairv2light_arch.py`` are read). Its imports of mamba_ssm (CUDA only), einops and
basicsr are satisfied in-process by small stand-ins defined here; the selective scan stand-in is a plain
step loop written from the recurrence, independent of sr4's implementation. Nothing from sr4 is
imported, so the fixtures are an independent reference for tests/test_mambairv2_golden.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

CASES = {
    # Tiny classic x2 (the pixelshuffle head's 64-channel convs dominate the size, x4 would double it).
    "classic_tiny_x2": dict(
        arch="mambairv2_arch.MambaIRv2",
        kwargs=dict(upscale=2, in_chans=3, img_size=64, embed_dim=12, d_state=4, depths=[2, 2], num_heads=[2, 3],
                    window_size=8, inner_rank=4, num_tokens=8, convffn_kernel_size=3, mlp_ratio=2.0,
                    img_range=1.0, upsampler="pixelshuffle", resi_connection="1conv"),
        seed=1234,
    ),
    "light_tiny_x4": dict(
        arch="mambairv2light_arch.MambaIRv2Light",
        kwargs=dict(upscale=4, in_chans=3, img_size=64, embed_dim=12, d_state=4, depths=[2, 2], num_heads=[2, 2],
                    window_size=8, inner_rank=4, num_tokens=8, convffn_kernel_size=5, mlp_ratio=1.0,
                    img_range=1.0, upsampler="pixelshuffledirect", resi_connection="1conv"),
        seed=4321,
    ),
}
INPUT_SHAPE = (2, 3, 19, 23)


def step_loop_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """h_t = exp(dt A) h_{t-1} + dt B_t u_t ; y_t = <h_t, C_t> + D u_t, one time step at a time, fp32."""
    u, delta, A = u.float(), delta.float(), A.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    groups = B.shape[1]
    Bx = B.float().repeat_interleave(dim // groups, dim=1)
    Cx = C.float().repeat_interleave(dim // groups, dim=1)
    state = u.new_zeros(batch, dim, A.shape[1])
    out = []
    for t in range(length):
        dt = delta[:, :, t, None]
        state = torch.exp(dt * A[None]) * state + dt * Bx[:, :, :, t] * u[:, :, t, None]
        out.append((state * Cx[:, :, :, t]).sum(-1))
    y = torch.stack(out, dim=-1)
    if D is not None:
        y = y + u * D.float()[None, :, None]
    return y


def install_stand_ins() -> None:
    def module(name: str, **attrs) -> None:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod

    def to_2tuple(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    def trunc_normal_(t, mean=0.0, std=1.0, a=-2.0, b=2.0):
        return torch.nn.init.trunc_normal_(t, mean, std, a, b)

    def repeat(t, pattern, **sizes):
        if pattern.replace(" ", "") != "n->dn":
            raise NotImplementedError(pattern)
        return t.unsqueeze(0).expand(sizes["d"], -1)

    class Registry:
        def register(self):
            return lambda obj: obj

    for pkg in ("basicsr", "basicsr.archs", "basicsr.utils", "mamba_ssm", "mamba_ssm.ops"):
        module(pkg, __path__=[])
    module("basicsr.archs.arch_util", to_2tuple=to_2tuple, trunc_normal_=trunc_normal_)
    module("basicsr.utils.registry", ARCH_REGISTRY=Registry())
    module("einops", repeat=repeat, rearrange=None)
    module("mamba_ssm.ops.selective_scan_interface", selective_scan_fn=step_loop_scan,
           selective_scan_ref=step_loop_scan)


def load_official(repo: Path, dotted: str) -> type:
    file_stem, cls_name = dotted.split(".")
    path = repo / "basicsr" / "archs" / f"{file_stem}.py"
    spec = importlib.util.spec_from_file_location(f"official_{file_stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, cls_name)


@torch.no_grad()
def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Spread every weight so that every branch (routing included) visibly matters."""
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        if name.endswith("A_logs"):
            p.copy_(torch.log(torch.arange(1, p.shape[1] + 1, dtype=torch.float32)).expand_as(p) + 0.2 * noise)
        elif name.endswith("dt_projs_bias"):
            p.add_(0.3 * noise)
        elif "norm" in name and name.endswith("weight") or name.endswith("Ds"):
            p.copy_(1.0 + 0.2 * noise)
        elif name.endswith(("scale1", "scale2")):
            p.copy_(0.5 * noise)
        elif name.endswith("relative_position_bias_table") or "route" in name:
            p.copy_(1.0 * noise)
        else:
            fan_in = math.prod(p.shape[1:]) if p.dim() > 1 else p.shape[0]
            p.copy_(noise / math.sqrt(fan_in))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("official_repo", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/data/golden")
    args = parser.parse_args()
    install_stand_ins()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    for name, case in CASES.items():
        gen = torch.Generator().manual_seed(case["seed"])
        cls = load_official(args.official_repo, case["arch"])
        torch.manual_seed(case["seed"])
        model = cls(**case["kwargs"]).eval()
        randomise(model, gen)
        x = torch.rand(INPUT_SHAPE, generator=gen)
        forward_seed = case["seed"] + 1
        torch.manual_seed(forward_seed)
        with torch.no_grad():
            y = model(x)
        torch.manual_seed(forward_seed)
        with torch.no_grad():
            y_again = model(x)
        assert torch.equal(y, y_again), "official forward is not reproducible under a fixed seed"
        weights = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(args.out / f"{name}.weights.safetensors"))
        save_file({"input": x.contiguous(), "output": y.contiguous()}, str(args.out / f"{name}.io.safetensors"))
        meta = dict(arch=case["arch"].split(".")[1], kwargs=case["kwargs"], forward_seed=forward_seed,
                    torch=torch.__version__, input_shape=list(INPUT_SHAPE), output_shape=list(y.shape))
        (args.out / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(name, tuple(y.shape), f"out mean {y.mean():.4f} std {y.std():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
