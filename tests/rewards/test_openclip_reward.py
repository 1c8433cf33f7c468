"""OpenCLIPVideoReward on a tiny random open_clip model (SPEC.md §4.1)."""

from __future__ import annotations

import json

import pytest
import torch

from streamr1.rewards.openclip import OpenCLIPVideoReward
from tests.rewards.conftest import tiny_config

PROMPTS = ["a red circle moving left", "a blue square moving up"]


def video(b: int = 2, t: int = 4, size: int = 24, requires_grad: bool = False) -> torch.Tensor:
    return torch.rand(b, t, 3, size, size, generator=torch.Generator().manual_seed(1)).requires_grad_(requires_grad)


def test_scores_per_axis_are_finite_b(tiny_reward):
    with torch.no_grad():
        out = tiny_reward(video(), PROMPTS)
    assert set(out) == {"VQ", "MQ", "TA"} == set(tiny_reward.axes)
    for axis, s in out.items():
        assert s.shape == (2,), axis
        assert torch.isfinite(s).all(), axis


@pytest.mark.parametrize("axis", ["VQ", "MQ", "TA"])
def test_gradient_wrt_video_is_nonzero(tiny_reward, axis):
    v = video(requires_grad=True)
    (g,) = torch.autograd.grad(tiny_reward(v, PROMPTS)[axis].sum(), v)
    assert g.shape == v.shape and torch.isfinite(g).all()
    assert g.abs().sum() > 0
    assert (g[0].abs().sum() > 0) and (g[1].abs().sum() > 0)  # every sample gets its own gradient


def test_text_alignment_depends_on_the_prompt(tiny_reward):
    v = video()
    with torch.no_grad():
        a = tiny_reward(v, PROMPTS)
        b = tiny_reward(v, ["a green triangle moving right", "an empty scene"])
    assert not torch.allclose(a["TA"], b["TA"])
    assert torch.equal(a["VQ"], b["VQ"]) and torch.equal(a["MQ"], b["MQ"])  # only TA reads the prompt


def test_static_video_has_finite_motion_gradient(tiny_reward):
    v = video(b=1, t=1).expand(1, 5, 3, 24, 24).clone().requires_grad_(True)  # 5 identical frames
    (g,) = torch.autograd.grad(tiny_reward(v, PROMPTS[:1])["MQ"].sum(), v)
    assert torch.isfinite(g).all()


def test_frame_subsampling_and_random_init_is_seeded():
    a = OpenCLIPVideoReward(model_config=tiny_config(), num_frames=3)
    b = OpenCLIPVideoReward(model_config=tiny_config(), num_frames=3)
    assert a.frame_indices(9).tolist() == [0, 4, 8] and a.frame_indices(2).tolist() == [0, 1]
    v = video(t=9)
    with torch.no_grad():
        oa, ob = a(v, PROMPTS), b(v, PROMPTS)
        # only frames 0, 4, 8 are scored: changing the others changes nothing
        v2 = v.clone()
        v2[:, [1, 2, 3, 5, 6, 7]] = 0.0
        oc = a(v2, PROMPTS)
    for axis in oa:
        assert torch.equal(oa[axis], ob[axis])  # same seed, same random weights (every DDP rank agrees)
        assert torch.allclose(oa[axis], oc[axis])


def test_heads_round_trip(tmp_path):
    a = OpenCLIPVideoReward(model_config=tiny_config(), trainable_heads=True)
    assert all(p.requires_grad for p in a.heads.parameters())
    assert not any(p.requires_grad for p in a.clip.parameters())
    with torch.no_grad():  # "train" the heads: any change away from the seeded init
        for p in a.heads.parameters():
            p.add_(0.1 * torch.randn_like(p))
    a.save_heads(tmp_path / "heads.pt")
    b = OpenCLIPVideoReward(model_config=tiny_config(), heads_path=str(tmp_path / "heads.pt"))
    c = OpenCLIPVideoReward(model_config=tiny_config())
    v = video()
    with torch.no_grad():
        oa, ob, oc = a(v, PROMPTS), b(v, PROMPTS), c(v, PROMPTS)
    for axis in oa:
        assert torch.equal(oa[axis], ob[axis])
    assert not torch.allclose(oa["VQ"], oc["VQ"])

    wrong = OpenCLIPVideoReward(model_config=tiny_config(), head_hidden=8)
    with pytest.raises(ValueError, match="head_hidden"):
        wrong.load_heads(tmp_path / "heads.pt")


def test_whole_reward_round_trip_and_pretrained_file(tmp_path):
    a = OpenCLIPVideoReward(model_config=tiny_config(), num_frames=3, seed=7)
    a.save(tmp_path / "reward.pt")
    b = OpenCLIPVideoReward(state_path=str(tmp_path / "reward.pt"))  # architecture from the file
    c = OpenCLIPVideoReward(model_config=tiny_config(), num_frames=3)  # seed 0: other weights...
    c.load_state(tmp_path / "reward.pt")  # ...until loaded
    # CLIP weights alone, as open_clip would write them: a `pretrained` file and a `local-dir:` folder
    torch.save(a.clip.state_dict(), tmp_path / "clip.bin")
    d = OpenCLIPVideoReward(model_config=tiny_config(), num_frames=3, pretrained=str(tmp_path / "clip.bin"), seed=7)
    folder = tmp_path / "clip_dir"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny_config()}))
    torch.save(a.clip.state_dict(), folder / "open_clip_pytorch_model.bin")
    e = OpenCLIPVideoReward(pretrained=f"local-dir:{folder}", num_frames=3, seed=7)
    v = video(t=5)
    with torch.no_grad():
        ref = a(v, PROMPTS)
        for other in (b, c, d, e):
            out = other(v, PROMPTS)
            for axis in ref:
                assert torch.allclose(ref[axis], out[axis], atol=1e-6), axis
    assert b.num_frames == 3 and b.config() == a.config()
    # a folder's own preprocessing (mean/std) is used, and survives save() -> state_path
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": tiny_config(), "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}}))
    f = OpenCLIPVideoReward(pretrained=f"local-dir:{folder}")
    f.save(tmp_path / "f.pt")
    g = OpenCLIPVideoReward(state_path=str(tmp_path / "f.pt"))
    assert f.mean.flatten().tolist() == g.mean.flatten().tolist() == [0.5] * 3 and g.std.flatten()[0] == 0.25


def test_missing_files_name_the_path_and_the_key(tmp_path):
    missing = str(tmp_path / "no_such_clip.bin")
    with pytest.raises(FileNotFoundError) as err:
        OpenCLIPVideoReward(model_config=tiny_config(), pretrained=missing)
    assert missing in str(err.value) and "`pretrained`" in str(err.value)
    with pytest.raises(FileNotFoundError, match="`heads_path`"):
        OpenCLIPVideoReward(model_config=tiny_config(), heads_path=str(tmp_path / "heads.pt"))
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        OpenCLIPVideoReward(pretrained=f"local-dir:{tmp_path}")


def test_config_errors_are_explained():
    cfg = tiny_config()
    cfg["text_cfg"]["vocab_size"] = 1000
    with pytest.raises(ValueError, match="49408"):
        OpenCLIPVideoReward(model_config=cfg)
    cfg = tiny_config()
    del cfg["vision_cfg"]["head_width"]  # open_clip's default 64 > width 32: zero heads
    with pytest.raises(ValueError, match="head_width"):
        OpenCLIPVideoReward(model_config=cfg)
    with pytest.raises(ValueError, match="model_name"):
        OpenCLIPVideoReward()
