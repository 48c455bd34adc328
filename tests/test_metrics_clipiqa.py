"""CLIP-IQA against the real pyiqa 0.1.13 on a small random CLIP written as a TorchScript RN50.pt.

tests/data/metrics/clipiqa/ holds (see make_reference.py there) an xz-compressed TorchScript
archive of pyiqa's own CLIP class, traced and saved the way OpenAI's RN50.pt is, with a small
ModifiedResNet (width 4, blocks 1-2-1-1) and a 2-layer text tower; four photo crops; and what
pyiqa computed on them: create_metric('clipiqa') scores (default and pos_embedding=True), the
ten prompt logits and clip.tokenize's ids. Tolerance: 1e-4 relative on scores, 1e-4 relative
(+2e-5 absolute) on logits; the observed differences are ~1e-7 and ~5e-6.
"""

import json
import lzma
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sr4.metrics.clip_model import CLIP, CLIPConfig, _AttentionPool, _CausalSelfAttention, read_clip_state_dict
from sr4.metrics.clipiqa import CLIPIQA, PROMPTS, WEIGHT_FILES, prompt_tokens
from sr4.metrics.weights import WeightsError

DATA = Path(__file__).parent / "data" / "metrics" / "clipiqa"
REF = json.loads((DATA / "reference.json").read_text())
IMAGES = sorted(REF["images"])


def _image(name: str) -> torch.Tensor:
    arr = np.array(Image.open(DATA / name).convert("RGB"))
    return torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("torch_hub")
    (root / "clip").mkdir()
    (root / "clip" / "RN50.pt").write_bytes(lzma.decompress((DATA / "RN50_small.pt.xz").read_bytes()))
    return root


@pytest.fixture(scope="module")
def model(root) -> CLIPIQA:
    return CLIPIQA.from_pretrained(root)


def test_prompt_ids_are_clip_tokenize_output():
    assert [p for pair in PROMPTS for p in pair] == REF["prompts"]
    ref = torch.tensor(REF["clip_tokenize"])
    assert ref.shape == (10, 77)
    assert torch.equal(prompt_tokens(77), ref.long())
    # The short form keeps exactly the non-padding columns.
    short = prompt_tokens()
    assert torch.equal(short, ref[:, : short.shape[1]].long()) and not ref[:, short.shape[1]:].any()


def test_archive_is_torchscript_with_fp16_weights(root):
    with zipfile.ZipFile(root / "clip" / "RN50.pt") as zf:
        assert any(n.endswith("/code/__torch__.py") or "/code/__torch__/" in n for n in zf.namelist())
    sd = read_clip_state_dict(root / "clip" / "RN50.pt")
    assert sd["visual.layer1.0.conv1.weight"].dtype == torch.float16
    assert sd["visual.bn1.running_var"].dtype == torch.float32
    assert int(sd["vocab_size"]) == 49408  # extra entries of the release file are tolerated
    assert CLIPConfig.from_state_dict(sd) == CLIPConfig(32, 224, (1, 2, 1, 1), 4, 77, 49408, 64, 2)


@pytest.mark.parametrize("name", IMAGES)
def test_matches_pyiqa(model, name):
    ref = REF["images"][name]
    x = _image(name)
    with torch.no_grad():
        logits = model.prompt_logits(x)[0]
        score = model(x)
    torch.testing.assert_close(logits, torch.tensor(ref["logits"]), rtol=1e-4, atol=2e-5)
    assert score.shape == (1,)
    assert float(score[0]) == pytest.approx(ref["clipiqa"], rel=1e-4)


def test_reference_is_discriminative():
    # Guard against a degenerate fixture: the logits differ clearly between images and prompts.
    logits = torch.tensor([REF["images"][n]["logits"] for n in IMAGES])
    assert logits.std(dim=0).min() > 0.05 and logits.std(dim=1).min() > 0.5
    pos = [REF["images"][n]["clipiqa_pos_embedding"] for n in IMAGES]
    assert max(abs(a - REF["images"][n]["clipiqa"]) for a, n in zip(pos, IMAGES)) > 1e-3


def test_pos_embedding_option_matches_pyiqa(root):
    m = CLIPIQA.from_pretrained(root, pos_embedding=True)
    for name in IMAGES:
        with torch.no_grad():
            score = float(m(_image(name))[0])
        assert score == pytest.approx(REF["images"][name]["clipiqa_pos_embedding"], rel=1e-4), name


def test_batch_equals_singles(model):
    a, b = _image("coffee_96x64.png"), _image("chelsea_96x64.png")
    with torch.no_grad():
        both = model(torch.cat([a, b]))
        single = torch.cat([model(a), model(b)])
    torch.testing.assert_close(both, single, rtol=1e-5, atol=1e-6)


def test_gradient_reaches_input(model):
    x = _image("astronaut_75x53.png").requires_grad_(True)
    model(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in model.parameters())


def test_missing_file_names_the_paths(tmp_path):
    with pytest.raises(WeightsError, match=str(tmp_path / "clip" / "RN50.pt")):
        CLIPIQA.from_pretrained(tmp_path)
    assert WEIGHT_FILES[0].name == "RN50.pt"


def test_file_directly_in_weights_dir(root, tmp_path):
    (tmp_path / "RN50.pt").write_bytes((root / "clip" / "RN50.pt").read_bytes())
    m = CLIPIQA.from_pretrained(tmp_path)
    name = IMAGES[0]
    with torch.no_grad():
        assert float(m(_image(name))[0]) == pytest.approx(REF["images"][name]["clipiqa"], rel=1e-4)


def test_plain_state_dict_file_gives_same_scores(root, tmp_path):
    # pyiqa's loader also accepts a torch.save'd state dict in place of the TorchScript archive.
    sd = {k: v.clone() for k, v in read_clip_state_dict(root / "clip" / "RN50.pt").items()}
    torch.save(sd, tmp_path / "RN50.pt")
    m = CLIPIQA.from_pretrained(tmp_path)
    name = IMAGES[1]
    with torch.no_grad():
        assert float(m(_image(name))[0]) == pytest.approx(REF["images"][name]["clipiqa"], rel=1e-4)


def test_incomplete_or_foreign_files_are_rejected(root, tmp_path):
    sd = {k: v.clone() for k, v in read_clip_state_dict(root / "clip" / "RN50.pt").items()}
    del sd["visual.layer2.1.bn2.running_mean"]
    torch.save(sd, tmp_path / "incomplete.pt")
    with pytest.raises(WeightsError, match=r"incomplete\.pt.*visual\.layer2\.1\.bn2\.running_mean"):
        CLIPIQA.from_file(tmp_path / "incomplete.pt")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match=r"other\.pt: not an OpenAI CLIP ResNet checkpoint"):
        CLIPIQA.from_file(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"junk\.pt"):
        CLIPIQA.from_file(tmp_path / "junk.pt")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_archive_code_is_never_run(tmp_path):
    marker = tmp_path / "was_run"
    evil = tmp_path / "RN50.pt"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("RN50/data.pkl", pickle.dumps({"visual": _Payload(marker)}, protocol=2))
        zf.writestr("RN50/code/__torch__.py", "")
        zf.writestr("RN50/constants.pkl", pickle.dumps((), protocol=2))
    with pytest.raises(WeightsError, match="refusing global"):
        CLIPIQA.from_file(evil)
    assert not marker.exists()


def test_bad_input_shapes(model):
    with pytest.raises(ValueError, match="B, 3, H, W"):
        model(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="B, 3, H, W"):
        model(torch.rand(1, 4, 64, 64))
    with pytest.raises(ValueError, match="at least 31 pixels"):
        model(torch.rand(1, 3, 30, 64))
    with torch.no_grad():
        assert model(torch.rand(1, 3, 31, 31)).shape == (1,)  # the smallest size the network reduces to 1x1


def test_grey_input_counts_as_three_equal_channels(model):
    grey = _image("coffee_96x64.png").mean(dim=1, keepdim=True)
    with torch.no_grad():
        torch.testing.assert_close(model(grey), model(grey.expand(-1, 3, -1, -1)), rtol=1e-6, atol=1e-7)


def test_default_is_rn50_with_openai_names():
    with torch.device("meta"):
        net = CLIP()
    sd = net.state_dict()
    assert CLIPConfig.from_state_dict(sd) == CLIPConfig()
    assert sd["visual.attnpool.positional_embedding"].shape == (50, 2048)
    assert sd["visual.layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert sd["visual.layer4.2.bn3.running_var"].shape == (2048,)
    assert sd["transformer.resblocks.11.attn.in_proj_weight"].shape == (1536, 512)
    assert sd["text_projection"].shape == (512, 1024) and sd["token_embedding.weight"].shape == (49408, 512)
    assert "visual.layer1.1.downsample.0.weight" not in sd
    assert CLIPConfig().vision_heads == 32 and CLIPConfig().text_heads == 8


def test_text_attention_equals_torch_multihead_with_causal_mask():
    torch.manual_seed(0)
    ours = _CausalSelfAttention(128, 4)
    for p in ours.parameters():
        torch.nn.init.normal_(p, std=0.1)
    ref = torch.nn.MultiheadAttention(128, 4)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 9, 128)
    mask = torch.full((9, 9), float("-inf")).triu(1)
    with torch.no_grad():
        want = ref(x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), need_weights=False, attn_mask=mask)[0]
        torch.testing.assert_close(ours(x), want.transpose(0, 1), rtol=1e-5, atol=1e-6)


def test_attention_pool_single_query_equals_full_attention():
    torch.manual_seed(1)
    pool = _AttentionPool(grid=3, channels=128, heads=2, output_dim=24)
    for p in pool.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 128, 5, 3)
    tokens = x.flatten(2).permute(2, 0, 1)
    tokens = torch.cat([tokens.mean(0, keepdim=True), tokens])  # (HW+1, N, C), as CLIP's pool lays them out
    with torch.no_grad():
        full, _ = F.multi_head_attention_forward(
            tokens, tokens, tokens, 128, 2, None, torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
            None, None, False, 0.0, pool.c_proj.weight, pool.c_proj.bias, training=False, need_weights=False,
            use_separate_proj_weight=True, q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight,
            v_proj_weight=pool.v_proj.weight,
        )
        torch.testing.assert_close(pool(x), full[0], rtol=1e-5, atol=1e-6)
