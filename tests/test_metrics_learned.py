"""LPIPS and DISTS with random weights written in the real file formats.

Files written here: torchvision's `alexnet-owt-*.pth` / `vgg16-*.pth` (state dict of the whole
network: features.* and classifier.*), pyiqa's LPIPS file (lin<k>.model.1.weight, optionally
the trunk as net.slice<s>.<i>.*) and DISTS file (alpha, beta, optionally stage<s>.<i>.*).
The distances are checked against a functional re-computation written from the papers' formulas,
and against the official `lpips` 0.1.4 and `DISTS_pytorch` 0.1 packages (learned_official.json,
computed outside this repo on the deterministic formula_* weights below).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sr4.metrics.dists import DISTS
from sr4.metrics.lpips import LPIPS
from sr4.metrics.weights import ALEXNET, DISTS_W, LPIPS_ALEX, VGG16, WeightsError

ALEX_CONVS = [(0, 3, 64, 11), (3, 64, 192, 5), (6, 192, 384, 3), (8, 384, 256, 3), (10, 256, 256, 3)]
VGG_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
VGG_CH = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256), (256, 512), (512, 512),
          (512, 512), (512, 512), (512, 512), (512, 512)]


def _conv(gen, cin, cout, k):
    std = (2.0 / (cin * k * k)) ** 0.5
    return torch.randn(cout, cin, k, k, generator=gen) * std, torch.randn(cout, generator=gen) * 0.01


def torchvision_alexnet(gen):
    sd = {}
    for i, cin, cout, k in ALEX_CONVS:
        sd[f"features.{i}.weight"], sd[f"features.{i}.bias"] = _conv(gen, cin, cout, k)
    sd["classifier.1.weight"] = torch.zeros(8, 4)  # present in the real file, ignored
    return sd


def torchvision_vgg16(gen):
    sd = {}
    for i, (cin, cout) in zip(VGG_CONVS, VGG_CH):
        sd[f"features.{i}.weight"], sd[f"features.{i}.bias"] = _conv(gen, cin, cout, 3)
    return sd


def _formula(shape, layer, scale):
    # Platform-independent weights (no RNG): reference values computed elsewhere can be reproduced.
    i = np.arange(int(np.prod(shape)))
    return torch.from_numpy(scale * np.sin(0.7 * i + 1.3 * layer) * np.cos(0.013 * i)).float().reshape(shape)


def formula_alexnet():
    sd = {}
    for layer, (i, cin, cout, k) in enumerate(ALEX_CONVS):
        sd[f"features.{i}.weight"] = _formula((cout, cin, k, k), layer, (3.0 / (cin * k * k)) ** 0.5)
        sd[f"features.{i}.bias"] = _formula((cout,), layer + 10, 0.01)
    return sd


def formula_vgg16():
    sd = {}
    for layer, (i, (cin, cout)) in enumerate(zip(VGG_CONVS, VGG_CH)):
        sd[f"features.{i}.weight"] = _formula((cout, cin, 3, 3), layer, (3.0 / (cin * 9)) ** 0.5)
        sd[f"features.{i}.bias"] = _formula((cout,), layer + 20, 0.01)
    return sd


def formula_heads():
    return {f"lin{k}.model.1.weight": _formula((1, c, 1, 1), k + 40, 0.05).abs()
            for k, c in enumerate([64, 192, 384, 256, 256])}


def formula_alpha_beta():
    return {"alpha": 0.1 + _formula((1, 1475, 1, 1), 50, 0.01), "beta": 0.1 + _formula((1, 1475, 1, 1), 51, 0.01)}


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    gen = torch.Generator().manual_seed(0)
    (root / "checkpoints").mkdir()
    (root / "pyiqa").mkdir()
    torch.save(torchvision_alexnet(gen), root / "checkpoints" / ALEXNET.name)
    lins = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=gen) * 0.1
            for k, c in enumerate([64, 192, 384, 256, 256])}
    torch.save(lins, root / "pyiqa" / LPIPS_ALEX.name)
    torch.save(torchvision_vgg16(gen), root / "checkpoints" / VGG16.name)
    ab = {"alpha": 0.1 + 0.01 * torch.randn(1, 1475, 1, 1, generator=gen),
          "beta": 0.1 + 0.01 * torch.randn(1, 1475, 1, 1, generator=gen)}
    torch.save(ab, root / "pyiqa" / DISTS_W.name)
    return root


def images(seed=0, size=64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, size, size, generator=g)
    y = (x + 0.1 * torch.randn(2, 3, size, size, generator=g)).clamp(0, 1)
    return x, y


def lpips_reference(sd_tv, lins, x, y):
    """LPIPS v0.1 written out with torch.nn.functional only."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(img):
        h = ((2 * img - 1) - shift) / scale
        out = []
        h = F.relu(F.conv2d(h, sd_tv["features.0.weight"], sd_tv["features.0.bias"], stride=4, padding=2))
        out.append(h)
        h = F.max_pool2d(h, 3, 2)
        h = F.relu(F.conv2d(h, sd_tv["features.3.weight"], sd_tv["features.3.bias"], padding=2))
        out.append(h)
        h = F.max_pool2d(h, 3, 2)
        for i in (6, 8, 10):
            h = F.relu(F.conv2d(h, sd_tv[f"features.{i}.weight"], sd_tv[f"features.{i}.bias"], padding=1))
            out.append(h)
        return out

    total = 0
    for k, (a, b) in enumerate(zip(taps(x), taps(y))):
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + ((a - b) ** 2 * lins[f"lin{k}.model.1.weight"]).sum(1).mean((1, 2))
    return total


def test_lpips_loads_real_formats_and_matches_formula(weights_dir):
    model = LPIPS.from_pretrained(weights_dir)
    x, y = images()
    got = model(x, y)
    sd_tv = torch.load(weights_dir / "checkpoints" / ALEXNET.name, weights_only=True)
    lins = torch.load(weights_dir / "pyiqa" / LPIPS_ALEX.name, weights_only=True)
    torch.testing.assert_close(got, lpips_reference(sd_tv, lins, x, y), rtol=1e-5, atol=1e-6)
    assert torch.all(got > 0)
    torch.testing.assert_close(model(x, x), torch.zeros(2), atol=1e-7, rtol=0)
    # More noise, larger distance.
    far = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    assert torch.all(model(x, far) > got)


def test_lpips_is_differentiable_and_frozen(weights_dir):
    model = LPIPS.from_pretrained(weights_dir)
    model.train()  # a trainer may switch modes; the result must not change (no active dropout)
    x, y = images(1)
    x = x.clone().requires_grad_(True)
    loss = model(x, y).mean()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in model.parameters())
    model.eval()
    torch.testing.assert_close(model(x.detach(), y).mean(), loss.detach())


def test_lpips_full_pyiqa_state_dict_needs_no_torchvision_file(tmp_path, weights_dir):
    full = LPIPS.from_pretrained(weights_dir).state_dict()
    (tmp_path / "pyiqa").mkdir()
    torch.save(full, tmp_path / "pyiqa" / LPIPS_ALEX.name)
    x, y = images(2)
    torch.testing.assert_close(LPIPS.from_pretrained(tmp_path)(x, y), LPIPS.from_pretrained(weights_dir)(x, y))


def test_lpips_missing_and_bad_files(tmp_path, weights_dir):
    with pytest.raises(WeightsError, match=LPIPS_ALEX.name):
        LPIPS.from_pretrained(tmp_path)
    (tmp_path / "pyiqa").mkdir()
    lins = torch.load(weights_dir / "pyiqa" / LPIPS_ALEX.name, weights_only=True)
    torch.save(lins, tmp_path / "pyiqa" / LPIPS_ALEX.name)
    with pytest.raises(WeightsError, match=ALEXNET.name):
        LPIPS.from_pretrained(tmp_path)  # heads only and no trunk file
    lins["lin0.model.1.weight"] = torch.zeros(1, 3, 1, 1)
    torch.save(lins, tmp_path / "pyiqa" / LPIPS_ALEX.name)
    with pytest.raises(WeightsError, match="shape"):
        LPIPS().load_files(tmp_path / "pyiqa" / LPIPS_ALEX.name, weights_dir / "checkpoints" / ALEXNET.name)
    (tmp_path / "pyiqa" / LPIPS_ALEX.name).write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        LPIPS.from_pretrained(tmp_path)


def dists_reference(sd_tv, ab, x, y):
    """DISTS written out with torch.nn.functional only."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    a = np.hanning(5)[1:-1]
    win = torch.tensor(np.outer(a, a) / np.outer(a, a).sum(), dtype=torch.float32)[None, None]

    def l2pool(h):
        return (F.conv2d(h * h, win.repeat(h.shape[1], 1, 1, 1), stride=2, padding=1, groups=h.shape[1]) + 1e-12).sqrt()

    def conv(h, i):
        return F.relu(F.conv2d(h, sd_tv[f"features.{i}.weight"], sd_tv[f"features.{i}.bias"], padding=1))

    def taps(img):
        out = [img]
        h = (img - mean) / std
        groups = [[0, 2], [5, 7], [10, 12, 14], [17, 19, 21], [24, 26, 28]]
        for s, idx in enumerate(groups):
            if s:
                h = l2pool(h)
            for i in idx:
                h = conv(h, i)
            out.append(h)
        return out

    w = ab["alpha"].sum() + ab["beta"].sum()
    al = ab["alpha"].flatten() / w
    be = ab["beta"].flatten() / w
    # per channel statistics over all taps, concatenated in channel order (3+64+...+512)
    sx = [t.flatten(2) for t in taps(x)]
    sy = [t.flatten(2) for t in taps(y)]
    s1s, s2s = [], []
    for a_, b_ in zip(sx, sy):
        mx, my = a_.mean(2), b_.mean(2)
        vx, vy = a_.var(2, unbiased=False), b_.var(2, unbiased=False)
        cov = (a_ * b_).mean(2) - mx * my
        s1s.append((2 * mx * my + 1e-6) / (mx**2 + my**2 + 1e-6))
        s2s.append((2 * cov + 1e-6) / (vx + vy + 1e-6))
    return 1 - ((torch.cat(s1s, 1) * al).sum(1) + (torch.cat(s2s, 1) * be).sum(1))


def test_dists_loads_real_formats_and_matches_formula(weights_dir):
    model = DISTS.from_pretrained(weights_dir)
    x, y = images(3, size=48)
    got = model(x, y)
    sd_tv = torch.load(weights_dir / "checkpoints" / VGG16.name, weights_only=True)
    ab = torch.load(weights_dir / "pyiqa" / DISTS_W.name, weights_only=True)
    torch.testing.assert_close(got, dists_reference(sd_tv, ab, x, y), rtol=1e-4, atol=1e-5)
    assert torch.all((got > 0) & (got < 1))
    torch.testing.assert_close(model(x, x), torch.zeros(2), atol=1e-6, rtol=0)
    xg = x.clone().requires_grad_(True)
    model(xg, y).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_dists_errors(tmp_path):
    (tmp_path / "pyiqa").mkdir()
    with pytest.raises(WeightsError, match=DISTS_W.name):
        DISTS.from_pretrained(tmp_path)
    torch.save({"alpha": torch.zeros(1, 1475, 1, 1)}, tmp_path / "pyiqa" / DISTS_W.name)
    with pytest.raises(WeightsError, match="alpha"):
        DISTS.from_pretrained(tmp_path)
    ones = torch.ones(1, 1475, 1, 1)
    torch.save({"alpha": ones, "beta": ones}, tmp_path / "pyiqa" / DISTS_W.name)
    with pytest.raises(WeightsError, match=VGG16.name):
        DISTS.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="DISTS expects"):
        DISTS()(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))


def test_lpips_accepts_heads_named_lins_or_without_dropout_slot(tmp_path, weights_dir):
    lins = torch.load(weights_dir / "pyiqa" / LPIPS_ALEX.name, weights_only=True)
    x, y = images(4)
    expected = LPIPS.from_pretrained(weights_dir)(x, y)
    trunk = weights_dir / "checkpoints" / ALEXNET.name
    for rename in (lambda k: k.replace("lin", "lins.", 1), lambda k: k.replace("model.1", "model.0")):
        f = tmp_path / "heads.pth"
        torch.save({rename(k): v for k, v in lins.items()}, f)
        torch.testing.assert_close(LPIPS().load_files(f, trunk)(x, y), expected)


def test_availability_reporting(tmp_path, weights_dir):
    from sr4.metrics.learned import build_learned, weight_status

    for sub, name in (("clip", "RN50.pt"), ("pyiqa", "musiq_koniq_ckpt-e95806b9.pth")):
        (tmp_path / sub).mkdir(exist_ok=True)
        (tmp_path / sub / name).write_bytes(b"placeholder")
    got = build_learned(["lpips", "dists", "clipiqa", "maniqa", "musiq"], tmp_path, torch.device("cpu"))
    assert got.functions == {}
    assert LPIPS_ALEX.name in got.unavailable["lpips"] and DISTS_W.name in got.unavailable["dists"]
    assert "ckpt_koniq10k.pt" in got.unavailable["maniqa"]
    # Files present but not weights: the reason names the file that could not be read.
    assert "RN50.pt" in got.unavailable["clipiqa"]
    assert "musiq_koniq_ckpt-e95806b9.pth" in got.unavailable["musiq"]
    ok = build_learned(["lpips", "dists"], weights_dir, torch.device("cpu"))
    assert set(ok.functions) == {"lpips", "dists"} and ok.unavailable == {}
    x = torch.rand(1, 3, 40, 40)
    assert ok.functions["lpips"](x, x) == pytest.approx(0.0, abs=1e-6)
    status = {(s.metric, s.name): s for s in weight_status(tmp_path)}
    assert status[("clipiqa", "RN50.pt")].found == tmp_path / "clip" / "RN50.pt"
    assert status[("lpips", LPIPS_ALEX.name)].found is None
    assert status[("lpips", LPIPS_ALEX.name)].looked_in[0] == tmp_path / "pyiqa" / LPIPS_ALEX.name
    with pytest.raises(ValueError, match="unknown learned metric"):
        build_learned(["fid"], tmp_path, torch.device("cpu"))


def test_default_root_follows_torch_home(monkeypatch, tmp_path):
    from sr4.metrics.weights import default_root

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert default_root() == tmp_path / "hub"
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert default_root() == tmp_path / "c" / "torch" / "hub"


def test_dists_full_pyiqa_state_dict_needs_no_torchvision_file(tmp_path, weights_dir):
    model = DISTS.from_pretrained(weights_dir)
    (tmp_path / "pyiqa").mkdir()
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, tmp_path / "pyiqa" / DISTS_W.name)
    x, y = images(5, size=32)
    torch.testing.assert_close(DISTS.from_pretrained(tmp_path)(x, y), model(x, y))


@pytest.mark.parametrize("name", ["coffee", "chelsea"])
def test_matches_official_packages(tmp_path_factory, name):
    # learned_official.json: the official lpips / DISTS_pytorch packages on the same formula weights.
    import json
    from pathlib import Path

    from PIL import Image

    data = Path(__file__).parent / "data" / "metrics"
    ref = json.loads((data / "learned_official.json").read_text())["values"][name]
    root = tmp_path_factory.getbasetemp() / "formula_weights"
    if not root.exists():
        (root / "pyiqa").mkdir(parents=True)
        (root / "checkpoints").mkdir()
        torch.save(formula_alexnet(), root / "checkpoints" / ALEXNET.name)
        torch.save(formula_heads(), root / "pyiqa" / LPIPS_ALEX.name)
        torch.save(formula_vgg16(), root / "checkpoints" / VGG16.name)
        torch.save(formula_alpha_beta(), root / "pyiqa" / DISTS_W.name)

    def load(f):
        return torch.from_numpy(np.asarray(Image.open(data / f).convert("RGB")).copy()).permute(2, 0, 1)[None] / 255.0

    sr, hr = load(f"sr_{name}.png"), load(f"hr_{name}.png")
    with torch.no_grad():
        assert LPIPS.from_pretrained(root)(sr, hr).item() == pytest.approx(ref["lpips"], rel=1e-5, abs=1e-7)
        assert DISTS.from_pretrained(root)(sr, hr).item() == pytest.approx(ref["dists"], rel=1e-5, abs=1e-7)
