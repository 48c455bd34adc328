"""Deterministic MUSIQ test weights, shared by make_reference.py (run with the real pyiqa) and the tests.

Values come from an integer hash (splitmix64 of a CRC of the key and the element index), so every
platform and every numpy/torch version produces the same float32 tensors; no RNG is involved.
Only numpy and the standard library are used.
"""

from __future__ import annotations

import zlib

import numpy as np

# Small configurations given to pyiqa's MUSIQ (keyword arguments of its constructor). "koniq" keeps
# the real patch size, grid and one output; "ava" changes everything the loader must infer; "full" is
# the real-size network that create_metric('musiq') builds.
CONFIGS: dict[str, dict] = {
    "full": {},
    "koniq": dict(hidden_size=48, mlp_dim=96, num_heads=6, num_layers=2),
    "ava": dict(patch_size=16, hidden_size=32, mlp_dim=64, num_heads=4, num_layers=1, spatial_pos_grid_size=5,
                num_class=10),
}
IMAGES = ("coffee_83x117.png", "astronaut_253x161.png", "chelsea_270x406.png")
PAIR = ("pair_a_64x96.png", "pair_b_64x96.png")
WEIGHT_NAME = "musiq_koniq_ckpt-e95806b9.pth"


def _uniform(key: str, n: int) -> np.ndarray:
    """n values in [-1, 1) from splitmix64(crc32(key) << 32 + index)."""
    seed = np.uint64(zlib.crc32(key.encode())) << np.uint64(32)
    z = np.arange(n, dtype=np.uint64) + seed
    z = z * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / float(1 << 23) - 1.0


def tensor_values(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """float32 array for one state-dict entry, scaled so activations stay O(1) through the network."""
    n = int(np.prod(shape))
    u = _uniform(key, n)
    leaf = key.rsplit(".", 1)[-1]
    if "norm" in key or ".gn" in key or key.startswith("gn"):
        v = 1.0 + 0.2 * u if leaf == "weight" else 0.1 * u
    elif leaf == "bias":
        v = 0.1 * u
    elif leaf in ("position_emb", "scale_emb", "cls"):
        v = 0.5 * u  # large enough that a wrong position/scale index changes the score
    elif len(shape) == 2:  # linear layers: unit-variance outputs
        v = u * np.sqrt(3.0 / shape[1])
    else:  # standardised convolutions: the scale is irrelevant
        v = u
    return v.astype(np.float32).reshape(shape)


def state_dict_arrays(shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    return {k: tensor_values(k, tuple(s)) for k, s in shapes.items()}
