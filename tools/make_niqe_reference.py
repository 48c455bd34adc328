"""Write tests/data/metrics/niqe_basicsr142.json by running basicsr 1.4.2's OWN NIQE code on CPU.

Usage: python tools/make_niqe_reference.py BASICSR_REPO [--out tests/data/metrics/niqe_basicsr142.json]

BASICSR_REPO is a checkout of XPixelGroup/BasicSR at tag v1.4.2 (later commits change only imports and
docstrings of these files). Only ``basicsr/metrics/niqe.py``, ``basicsr/metrics/metric_util.py``,
``basicsr/utils/matlab_functions.py`` and ``basicsr/utils/color_util.py`` are read; the package's
``__init__`` files (which import the whole training stack) are replaced in-process by empty modules, and
cv2 by a stand-in (basicsr needs it only for ``convert_to='gray'``, which is not used here). Nothing from
sr4 is imported, so the values are an independent reference for tests/test_metrics_niqe.py.

Two values per scikit-image sample photo:

- ``basicsr_calculate_niqe_ycbcr``: basicsr's shipped ``calculate_niqe`` (Y of BT.601 YCbCr, crop 0).
- ``basicsr_niqe_core_on_yiq_gray``: basicsr's ``niqe()`` core on the gray image pyiqa uses, the Y of YIQ,
  ``round(255 * (0.299 R + 0.587 G + 0.114 B))`` in float32, computed element by element (see
  ``yiq_gray_elementwise``), with the sha256 of that gray image. A BLAS matrix product would round
  differently on different CPUs (FMA or not, summation order) and flip the pixels whose Y lies within float32
  rounding of a .5 tie; element-wise float32 arithmetic is the same on every IEEE-754 machine, so the
  reference input is too. basicsr's own float32 steps (its ``imresize`` and the scale-2 filtering) still
  depend on the CPU's BLAS at the 1e-6 level (astronaut) to 1e-4 level (rocket).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import platform
import sys
import types
from pathlib import Path

import numpy as np

SAMPLES = ("coffee", "chelsea", "astronaut", "rocket")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "metrics" / "niqe_basicsr142.json"


def yiq_gray_elementwise(rgb: np.ndarray) -> np.ndarray:
    """pyiqa's NIQE input (Y of YIQ from RGB/255 in float32, times 255, rounded) without a BLAS kernel."""
    x = rgb[..., :3].astype(np.float32) / np.float32(255)
    y = x[..., 0] * np.float32(0.299) + x[..., 1] * np.float32(0.587)
    y = y + x[..., 2] * np.float32(0.114)
    return np.round(y * np.float32(255)).astype(np.float64)


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_basicsr_niqe(repo: Path) -> types.ModuleType:
    """basicsr.metrics.niqe from the checkout, with only the files it needs and no package __init__."""
    for pkg in ("basicsr", "basicsr.metrics", "basicsr.utils"):
        sys.modules[pkg] = types.ModuleType(pkg)
    registry = types.ModuleType("basicsr.utils.registry")

    class _Registry:
        def register(self):
            return lambda fn: fn

    registry.METRIC_REGISTRY = _Registry()
    sys.modules["basicsr.utils.registry"] = registry
    if importlib.util.find_spec("cv2") is None:
        sys.modules["cv2"] = types.ModuleType("cv2")
    color = _load("basicsr.utils.color_util", repo / "basicsr" / "utils" / "color_util.py")
    sys.modules["basicsr.utils"].bgr2ycbcr = color.bgr2ycbcr
    _load("basicsr.utils.matlab_functions", repo / "basicsr" / "utils" / "matlab_functions.py")
    _load("basicsr.metrics.metric_util", repo / "basicsr" / "metrics" / "metric_util.py")
    return _load("basicsr.metrics.niqe", repo / "basicsr" / "metrics" / "niqe.py")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("basicsr_repo", type=Path)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()

    import scipy
    import skimage
    import skimage.data
    import torch

    bniqe = load_basicsr_niqe(args.basicsr_repo)
    params = np.load(args.basicsr_repo / "basicsr" / "metrics" / "niqe_pris_params.npz")
    values = {}
    for name in SAMPLES:
        rgb = getattr(skimage.data, name)()
        gray = yiq_gray_elementwise(rgb)
        core = bniqe.niqe(gray, params["mu_pris_param"], params["cov_pris_param"], params["gaussian_window"])
        ycbcr = bniqe.calculate_niqe(rgb[..., ::-1], crop_border=0, input_order="HWC", convert_to="y")
        values[name] = {
            "shape": list(rgb.shape),
            "sha256": hashlib.sha256(rgb.tobytes()).hexdigest(),
            "yiq_gray_sha256": hashlib.sha256(gray.tobytes()).hexdigest(),
            "basicsr_calculate_niqe_ycbcr": float(ycbcr),
            "basicsr_niqe_core_on_yiq_gray": float(core),
        }
        print(f"{name}: core {core:.10f}  calculate_niqe(ycbcr) {float(ycbcr):.10f}")
    source = (
        "tools/make_niqe_reference.py: basicsr 1.4.2's own metrics/niqe.py (calculate_niqe with crop_border=0, "
        "convert_to='y'; and niqe() on the element-wise float32 YIQ gray), "
        f"numpy {np.__version__}, scipy {scipy.__version__}, torch {torch.__version__}, "
        f"scikit-image {skimage.__version__}, {platform.machine()}; images: skimage.data"
    )
    args.out.write_text(json.dumps({"_source": source, "values": values}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
