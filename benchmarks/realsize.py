"""Helpers shared by bench_realsize.py and gpu_check.py (not a benchmark by itself).

- The published configurations: SD3-medium's transformer and VAE (stabilityai/stable-diffusion-3-medium-diffusers,
  transformer/config.json and vae/config.json), TSD-SR's 333 prompt tokens (its prompt_embeds.pt is (1, 333, 4096)),
  MambaIRv2 classic S/B/L and Light (tests/data/mambairv2/configs.json, read from csguoh/MambaIR's options).
- `write_model_folder`: a SNUCV model folder with random weights in the official formats, at real size or reduced
  (tests/refiner_golden.py writes it: every value a float16 number drawn from a generator seeded by its name).
- `PeakMemory`: the peak memory of a block above its level at entry (CUDA: torch's allocator; CPU: the process's
  resident memory, sampled every 5 ms).
- `StageMeter`: times sr4's pipeline stages (U, VAE encode, M on latent tiles, VAE decode) inside one normal
  pipeline call, by wrapping the stage methods of that one pipeline object.
- `run_official_snucv`: SNUCV's own inference code (dhryougit/NTIRE2025_SR_SNUCV, a checkout given at run time) on
  the same folder and images, in a subprocess, through tools/make_refiner_golden.py's driver; mamba_ssm's kernel
  when it imports, else sr4's selective scan stands in for it (same recurrence; the reference step loop would
  take hours at real size).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
for _extra in (ROOT / "tests", ROOT / "tools"):
    if str(_extra) not in sys.path:
        sys.path.insert(0, str(_extra))

SD3_MEDIUM_TRANSFORMER = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                              attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                              caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=192)
SD3_MEDIUM_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                      up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
                      layers_per_block=2, latent_channels=16, norm_num_groups=32, sample_size=1024,
                      scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)
PROMPT_TOKENS = 333
SEED = 16


def mambairv2_config(name: str = "classicSR_Base_x4", depths: list[int] | None = None) -> dict:
    """Hyperparameters of a released MambaIRv2; `depths` replaces the stages (e.g. [1]: one layer, same width)."""
    configs = json.loads((ROOT / "tests" / "data" / "mambairv2" / "configs.json").read_text())
    hp = dict(configs[name]["hyperparameters"])
    if depths is not None:
        hp["depths"], hp["num_heads"] = list(depths), hp["num_heads"][:len(depths)]
    return hp


def write_model_folder(root: Path, *, transformer: dict | None = None, vae: dict | None = None,
                       mamba: dict | None = None, prompt_tokens: int = PROMPT_TOKENS, seed: int = SEED) -> Path:
    """A SNUCV folder with random weights (real size by default); kept and reused when already complete."""
    from refiner_golden import write_golden_model_folder

    root = Path(root)
    done = root / "sr4_random_folder.json"
    spec = {"transformer": transformer or SD3_MEDIUM_TRANSFORMER, "vae": vae or SD3_MEDIUM_VAE,
            "mamba": mamba or mambairv2_config(), "prompt_tokens": prompt_tokens, "seed": seed}
    if done.is_file() and json.loads(done.read_text()) == spec:
        return root
    write_golden_model_folder(root, seed, transformer_config=spec["transformer"], vae_config=spec["vae"],
                              mamba_config=spec["mamba"], prompt_tokens=prompt_tokens,
                              transformer_dtype=torch.float16)
    done.write_text(json.dumps(spec))
    return root


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like 8-bit RGB test image (smooth shapes plus grain)."""
    from make_refiner_golden import smooth_image as make

    return make(height, width, seed)


# ----------------------------------------------------------------------------- memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """`with PeakMemory(device) as m: ...`; then m.peak_mb is the peak above the level at entry."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.peak_mb = 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = self._peak = _rss_bytes()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _rss_bytes())
        self.peak_mb = (peak - self._base) / 2**20


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- stages


class StageMeter:
    """Times and peak memory of each stage of `pipe` (a `sr4.Pipeline`) during ordinary calls.

    The stage methods of this one object are wrapped (instance attributes; nothing global changes), so the
    measured call is the pipeline's own code path. Stages: "U" (the upsampler), "VAE encode", "M" (the
    transformer on latent tiles), "VAE decode"."""

    def __init__(self, pipe):
        self.device = pipe.device
        self.records: dict[str, list[tuple[float, float]]] = {}
        targets = {"VAE encode": (pipe.refiner, "encode"), "M": (pipe.refiner, "predict_v"),
                   "VAE decode": (pipe.refiner, "decode")}
        if pipe.upsampler is not None:
            targets = {"U": (pipe.upsampler, "upscale_rgb"), **targets}
        for stage, (obj, name) in targets.items():
            self._wrap(stage, obj, name)

    def _wrap(self, stage: str, obj, name: str) -> None:
        inner = getattr(obj, name)

        def measured(*args, **kwargs):
            synchronize(self.device)
            with PeakMemory(self.device) as mem:
                start = time.perf_counter()
                out = inner(*args, **kwargs)
                synchronize(self.device)
                seconds = time.perf_counter() - start
            self.records.setdefault(stage, []).append((seconds, mem.peak_mb))
            return out

        object.__setattr__(obj, name, measured)

    def take(self) -> dict[str, tuple[float, float]]:
        """{stage: (seconds, peak MB)} of the calls since the last take (summed time, largest peak)."""
        out = {stage: (sum(r[0] for r in recs), max(r[1] for r in recs)) for stage, recs in self.records.items()}
        self.records = {}
        return out


# ----------------------------------------------------------------------------- the official code


def sr4_scan_for_official(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
    """mamba_ssm's `selective_scan_fn` signature on sr4's scan (MambaIRv2 uses neither z nor the last state).

    The backend is named (numba on the CPU, chunked on CUDA): inside the official process `mamba_ssm` is this
    stand-in, so sr4's "auto" must not go looking for it."""
    from sr4.networks.scan import selective_scan

    if z is not None or return_last_state:
        raise NotImplementedError("the stand-in covers what MambaIRv2 calls: no z, no last state")
    backend = "numba" if u.device.type == "cpu" else "chunked"
    return selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus, backend=backend)


def _official_scan(device: str):
    """mamba_ssm's own kernel when it imports (CUDA), else sr4's scan."""
    if device != "cpu":
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

            return selective_scan_fn
        except ImportError:
            pass
    return sr4_scan_for_official


def run_official_snucv(repo: Path, model: Path, inputs: Path, outputs: Path, *, seed: int, device: str,
                       deps: Path | None, fp32: bool, mamba: dict | None = None) -> dict:
    """Run SNUCV's inference on every image of `inputs` in a subprocess; {"seconds": its image loop, "peak_rss_mb"}.

    mamba: its U's MambaIRv2 arguments when the folder's U is not MambaIRv2-B (SNUCV's own)."""
    cmd = [sys.executable, __file__, "--official-child", str(repo), str(model), str(inputs), str(outputs),
           str(seed), device, "fp32" if fp32 else "fp16", str(deps or ""), json.dumps(mamba)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"the official SNUCV code failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _official_child(argv: list[str]) -> None:
    import resource

    from make_refiner_golden import run_official_snucv as drive

    repo, model, inputs, outputs, seed, device, precision, deps, mamba = argv
    seconds = drive(Path(repo), Path(model), Path(inputs), Path(outputs), int(seed), deps or None,
                    mamba=json.loads(mamba),
                    scan=_official_scan(device), device=device, fp32=precision == "fp32")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak}))


def compare_8bit(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    """(max, mean) absolute difference of two 8-bit images, in grey levels."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return int(d.max()), float(d.mean())


def timed(fn: Callable[[], object], device: torch.device | str) -> tuple[float, object]:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--official-child":
    _official_child(sys.argv[2:])
