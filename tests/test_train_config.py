"""Training config: the shipped recipes, overrides and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from sr4.training.config import ConfigError, config_from_dict, dump_config, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_snucv_recipe_matches_the_paper():
    c = load_config(ROOT / "configs/snucv_finetune.yaml")
    assert c.mode == "through-refiner"
    assert (c.loss.l1, c.loss.lpips, c.loss.clip) == (1.0, 0.1, 0.5)
    assert (c.loss.clip_pos, c.loss.clip_neg, c.loss.lpips_net) == ("Good photo", "Bad photo", "alex")
    assert c.optim.lr == 1e-5 and c.optim.betas == [0.9, 0.999]
    assert (c.data.gt_size, c.data.batch_size, c.total_steps) == (256, 4, 100_000)
    assert c.model.arch == "mambairv2" and "Base_x4" in c.model.checkpoint
    assert c.refiner.quantize_ste and len(c.data.train) == 2


def test_light_from_scratch_is_upsampler_mode():
    c = load_config(ROOT / "configs/light_from_scratch.yaml")
    assert c.mode == "upsampler" and c.model.arch == "mambairv2_light" and c.model.checkpoint is None
    assert c.model.kwargs["embed_dim"] == 48 and c.loss.clip == 0


def test_overrides_nested_lists_and_yaml_values():
    c = load_config(ROOT / "configs/snucv_finetune.yaml",
                    ["optim.lr=2e-5", "data.train.1.weight=0.25", "data.train.2.path=/x", "model.checkpoint=null",
                     "optim.betas=[0.8, 0.99]", "data.hflip=false"])
    assert c.optim.lr == 2e-5 and c.optim.betas == [0.8, 0.99] and c.data.hflip is False
    assert c.data.train[1].weight == 0.25 and c.data.train[2].path == "/x" and c.data.train[2].weight == 1.0
    assert c.model.checkpoint is None
    # round trip through the dumped YAML gives the same config
    again = config_from_dict(__import__("yaml").safe_load(dump_config(c)))
    assert again == c


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown key(s) in optim: lrr"),
    ("optim.lr=fast", "optim.lr: expected a number"),
    ("data.batch_size=2.5", "data.batch_size: expected an integer"),
    ("mode=gan", "mode: 'gan' is not one of"),
    ("data.gt_size=250", "multiple of model.scale"),
    ("data.train.7.path=/x", "out of range"),
    ("loss.clip_path=null", "loss.clip_path: required"),
    ("optim.betas=[0.9]", "optim.betas"),
    ("lr", "key=value"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as exc:
        load_config(ROOT / "configs/snucv_finetune.yaml", [override])
    assert message in str(exc.value) and "snucv_finetune.yaml" in str(exc.value)


def test_upsampler_mode_rejects_clip_and_needs_data(tmp_path):
    with pytest.raises(ConfigError, match="CLIP term needs the refiner"):
        config_from_dict({"mode": "upsampler", "data": {"train": [{"path": "x"}]}})
    with pytest.raises(ConfigError, match="data.train"):
        config_from_dict({"mode": "upsampler", "loss": {"clip": 0}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
