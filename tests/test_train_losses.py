"""Loss terms: values against independent computations, signs, and gradients reaching U through
the frozen refiner M (tiny random TSD-SR, tiny MambaIRv2, tiny CLIP, random LPIPS)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from refiner_fixtures import write_tiny_model_folder
from test_train_data import write_crops
from toy_models import make_tiny_clip

from sr4.ops import quantize_8bit_ste
from sr4.training.clip_loss import CLIPPromptLoss
from sr4.training.config import config_from_dict
from sr4.training.data import TrainDataset
from sr4.training.losses import SRLoss
from sr4.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train_assets")
    from sr4.metrics.lpips import LPIPS

    torch.manual_seed(0)
    lp = LPIPS()
    for lin in lp.lins:  # LPIPS heads are non-negative; random ones must be too for a distance
        lin.model[1].weight.data.abs_()
    (root / "lpips" / "pyiqa").mkdir(parents=True)
    torch.save(lp.state_dict(), root / "lpips" / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth")
    write_crops(root / "hr", 4, size=48)
    return {"root": root, "clip": make_tiny_clip(root / "clip"), "model": write_tiny_model_folder(root / "snucv"),
            "lpips": root / "lpips", "hr": root / "hr"}


def refiner_cfg(assets, tmp_path, **loss) -> dict:
    return {
        "mode": "through-refiner", "exp_dir": str(tmp_path / "exp"), "seed": 5, "total_steps": 2, "log_every": 1,
        "val_every": 0, "save_every": 0, "progress": False, "device": "cpu",
        "model": {"arch": "mambairv2", "checkpoint": str(assets["model"] / "mamba_trained.pth")},
        "refiner": {"path": str(assets["model"])},
        "data": {"train": [{"path": str(assets["hr"])}], "gt_size": 32, "batch_size": 2, "num_workers": 0},
        "loss": {"l1": 1.0, "lpips": 0.1, "clip": 0.5, "clip_path": str(assets["clip"]),
                 "lpips_weights": str(assets["lpips"]), **loss},
        "optim": {"lr": 1e-3, "ema_decay": 0.0},
    }


def test_ste_rounds_forward_and_passes_gradient():
    x = torch.tensor([0.1, 0.5004, 0.9999, 1.2, -0.01], requires_grad=True)
    y = quantize_8bit_ste(x)
    torch.testing.assert_close(y, torch.round(x.detach() * 255) / 255, rtol=0, atol=0)
    (y * torch.arange(5.0)).sum().backward()
    torch.testing.assert_close(x.grad, torch.arange(5.0))
    z = x.detach().clone().requires_grad_(True)
    (torch.round(z * 255) / 255).sum().backward()
    assert torch.count_nonzero(z.grad) == 0  # why the STE is needed


def test_l1_term_value_and_sign():
    gt = torch.rand(2, 3, 8, 8)
    loss = SRLoss(l1=1.0)
    assert loss(gt.clone(), gt).total.item() == 0.0
    sr = (gt + 0.1 * torch.randn_like(gt)).requires_grad_(True)
    terms = loss(sr, gt)
    torch.testing.assert_close(terms.total, (sr - gt).abs().mean())
    terms.total.backward()
    torch.testing.assert_close(sr.grad, torch.sign(sr - gt).detach() / sr.numel())


def test_clip_loss_matches_independent_clip_computation(assets):
    from transformers import AutoTokenizer, CLIPModel

    clip = CLIPPromptLoss(assets["clip"], "Good photo", "Bad photo")
    model = CLIPModel.from_pretrained(assets["clip"], local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(assets["clip"], local_files_only=True)
    img = torch.rand(3, 3, 32, 32)  # already CLIP's input size: no resize involved
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        t = tok(["Good photo", "Bad photo"], padding=True, return_tensors="pt")
        tf = model.get_text_features(**t)
        imf = model.get_image_features(pixel_values=(img - mean) / std)
        tf = getattr(tf, "pooler_output", tf)
        imf = getattr(imf, "pooler_output", imf)
        cos = torch.nn.functional.cosine_similarity(imf[:, None], tf[None], dim=-1)  # (B, 2)
        loss, scores = clip(img)
    torch.testing.assert_close(scores, cos, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, (1 - cos[:, 0] + cos[:, 1]).mean(), rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in clip.parameters())


def test_clip_descent_moves_towards_good_photo(assets):
    clip = CLIPPromptLoss(assets["clip"])
    x = torch.rand(2, 3, 48, 40, requires_grad=True)  # non-square: resize + centre crop path
    loss, s = clip(x)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with torch.no_grad():
        loss2, s2 = clip(x - 0.5 * x.grad / x.grad.abs().max())
    assert loss2 < loss
    assert (s2[:, 0] - s2[:, 1]).mean() > (s[:, 0] - s[:, 1]).mean().detach()


def _one_step_grads(assets, tmp_path, **loss) -> tuple[Trainer, dict[str, torch.Tensor]]:
    trainer = Trainer(config_from_dict(refiner_cfg(assets, tmp_path, **loss)))
    m_before = {k: v.clone() for k, v in trainer.refiner.state_dict().items()}
    batch = next(iter(trainer._loader(TrainDataset(trainer.cfg.data.train, 32, 4, trainer.cfg.seed))))
    out = trainer.train_step(batch)
    # the step leaves U's gradients in .grad (they are cleared before the next backward)
    grads = {n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None}
    assert all(p.grad is None for p in trainer.refiner.parameters())  # no gradients kept for M
    assert all(not p.requires_grad for p in trainer.refiner.parameters())
    m_after = trainer.refiner.state_dict()
    assert all(torch.equal(m_before[k], m_after[k]) for k in m_before)  # M unchanged by the step
    return trainer, grads | {"_out": out}


@pytest.mark.parametrize("term, weights", [
    ("lpips", {"l1": 0.0, "lpips": 1.0, "clip": 0.0}),
    ("clip", {"l1": 0.0, "lpips": 0.0, "clip": 1.0}),
])
def test_refiner_terms_reach_u_through_frozen_m(assets, tmp_path, term, weights):
    trainer, grads = _one_step_grads(assets, tmp_path, **weights)
    out = grads.pop("_out")
    assert set(out) >= {term, "total"} and "l1" not in out
    assert out[term] >= 0 if term == "lpips" else 0 <= out[term] <= 3
    total = sum(g.abs().sum() for g in grads.values())
    assert total > 0 and torch.isfinite(total)
    assert grads["conv_first.weight"].abs().sum() > 0  # the very first layer of U receives M's gradient


def test_ste_off_still_differentiable_and_loss_terms_all_logged(assets, tmp_path):
    cfg = refiner_cfg(assets, tmp_path)
    cfg["refiner"]["quantize_ste"] = False
    cfg["data"]["val"] = {"path": str(assets["hr"])}
    cfg["data"]["max_val_images"] = 1
    cfg["val_every"] = 2
    trainer = Trainer(config_from_dict(cfg))
    summary = trainer.fit()
    assert summary["step"] == 2
    # validation scores U's output and M's refinement of it with the challenge PSNR/SSIM
    assert set(summary["val"]) == {"sr_psnr", "sr_ssim", "refined_psnr", "refined_ssim"}
    assert 5 < summary["val"]["refined_psnr"] < 60 and 0 < summary["val"]["sr_ssim"] <= 1
    assert {"l1", "lpips", "clip", "clip_pos", "clip_neg", "total"} <= set(summary["losses"])
    parts = summary["losses"]
    expect = parts["l1"] + 0.1 * parts["lpips"] + 0.5 * parts["clip"]
    assert parts["total"] == pytest.approx(expect, rel=1e-5)
    assert parts["clip"] == pytest.approx(1 - parts["clip_pos"] + parts["clip_neg"], rel=1e-5)


def test_lpips_term_is_zero_for_identical_images_and_positive_otherwise(assets):
    from sr4.training.losses import build_lpips

    lp = build_lpips("alex", str(assets["lpips"]))
    gt = torch.rand(2, 3, 32, 32)
    loss = SRLoss(l1=0.0, lpips=1.0, lpips_module=lp)
    assert loss(gt.clone(), gt).total.item() == pytest.approx(0.0, abs=1e-7)
    sr = (gt + 0.05 * torch.randn_like(gt)).clamp(0, 1).requires_grad_(True)
    t = loss(sr, gt)
    assert t.total.item() > 0
    t.total.backward()
    with torch.no_grad():  # a small step against the gradient lowers the distance
        assert loss((sr - 1e-2 * sr.grad / sr.grad.abs().max()), gt).total < t.total
    with pytest.raises(ValueError, match="AlexNet"):
        build_lpips("vgg")


def test_through_refiner_resume_is_identical(assets, tmp_path):
    straight = config_from_dict(refiner_cfg(assets, tmp_path / "a") | {"total_steps": 4})
    Trainer(straight).fit()
    first = config_from_dict(refiner_cfg(assets, tmp_path / "b") | {"total_steps": 2})
    Trainer(first).fit()
    Trainer(config_from_dict(refiner_cfg(assets, tmp_path / "b") | {"total_steps": 4}), resume="auto").fit()
    from safetensors.torch import load_file

    from sr4.training.checkpoint import WEIGHTS, find_checkpoint

    a = load_file(str(find_checkpoint(tmp_path / "a" / "exp") / WEIGHTS))
    b = load_file(str(find_checkpoint(tmp_path / "b" / "exp") / WEIGHTS))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_checkpointing_gives_the_same_gradients(assets, tmp_path):
    """U is recomputed with the same routing noise (seeded generator) and M per block by diffusers:
    the gradients must match the plain run."""
    grads = []
    for ckpt in (False, True):
        cfg = refiner_cfg(assets, tmp_path / str(ckpt))
        cfg["model"]["gradient_checkpointing"] = ckpt
        cfg["refiner"]["gradient_checkpointing"] = ckpt
        trainer = Trainer(config_from_dict(cfg))
        if ckpt:
            m = trainer.refiner
            assert m.transformer.gradient_checkpointing and m.vae.encoder.gradient_checkpointing
        batch = next(iter(trainer._loader(TrainDataset(trainer.cfg.data.train, 32, 4, trainer.cfg.seed))))
        trainer.train_step(batch)
        grads.append({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-7)
