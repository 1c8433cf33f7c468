"""VideoAlignReward: VideoReward's Qwen2-VL reward, differentiable from the pixels (SPEC.md §4.6, issue 11).

Everything runs on a tiny random Qwen2-VL built offline (transformers 5), with a word-level tokenizer over the
prompt template that has Qwen2-VL's special tokens; the "published" VideoReward folder is written here in
transformers 4.45's key layout.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import safetensors.torch
import torch

from streamr1.bench.reward import random_qwen2vl, word_tokenizer, write_random_videoreward
from streamr1.rewards.videoalign import (
    CHAT_PREFIX,
    CHAT_SUFFIX,
    CLIP_MEAN,
    CLIP_STD,
    DETAILED_SPECIAL_PROMPT,
    REWARD_TOKENS,
    VideoAlignReward,
    legacy_key_renamer,
    patchify,
    smart_resize,
    unpatchify,
    videoreward_statistics,
)

SIZE = (56, 84)  # a frame: 4 x 6 patches of 14, 2 x 3 merged tokens
PROMPTS = ["a red fox runs through snow", "two cats"]


def _tokenizer(reward_tokens: bool = True):
    return word_tokenizer([CHAT_PREFIX, CHAT_SUFFIX, DETAILED_SPECIAL_PROMPT, *PROMPTS], reward_tokens=reward_tokens)


@pytest.fixture(scope="module")
def tok():
    return _tokenizer()


@pytest.fixture(scope="module")
def reward(tok):
    model = random_qwen2vl(tok, seed=0)
    head = torch.randn(3, model.config.text_config.hidden_size, generator=torch.Generator().manual_seed(1))
    return VideoAlignReward.from_parts(model, tok, head, size=SIZE).eval()


def _video(b=2, t=4, h=SIZE[0], w=SIZE[1], seed=0, lo=0.0, hi=1.0):
    return lo + (hi - lo) * torch.rand(b, t, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _processor(tok):
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tok,
                            video_processor=Qwen2VLVideoProcessor(cap_pixels_per_frame=False))


# ---------------------------------------------------------------------------------------------------- preprocessing
def test_smart_resize_gives_stream_r1_size():
    """480x832 at VideoReward's max_frame_pixels = 448 * 448 is Stream-R1's 336x588 (SPEC §4.6)."""
    assert smart_resize(480, 832, 28, 128 * 28 * 28, 448 * 448) == (336, 588)


def test_patches_equal_qwen2vl_video_processor(reward):
    """Our differentiable patches equal Qwen2VLVideoProcessor's (do_rescale=False) to 1e-5: frames already at size
    (no resize), and frames the processor resizes itself (bicubic, antialiased, 2x down to 56x84)."""
    from transformers import Qwen2VLVideoProcessor

    proc = Qwen2VLVideoProcessor(cap_pixels_per_frame=False)
    video = _video(seed=3)
    ours, grid = reward.preprocess(video)
    ref = proc(videos=list(video), do_rescale=False, do_resize=False, return_tensors="pt")
    assert ref["video_grid_thw"].tolist() == [list(grid)] * 2 == [[2, 4, 6]] * 2
    torch.testing.assert_close(ours.reshape(-1, ours.shape[-1]), ref["pixel_values_videos"], atol=1e-5, rtol=0)

    big = _video(seed=4, h=2 * SIZE[0], w=2 * SIZE[1], lo=0.25, hi=0.75)  # inside [0, 1] after resize: no clamp
    pixels = SIZE[0] * SIZE[1]
    ref = proc(videos=list(big), do_rescale=False, size={"shortest_edge": pixels, "longest_edge": pixels},
               return_tensors="pt")
    ours, grid = reward.preprocess(big)
    assert ref["video_grid_thw"].tolist() == [list(grid)] * 2
    torch.testing.assert_close(ours.reshape(-1, ours.shape[-1]), ref["pixel_values_videos"], atol=1e-5, rtol=0)


def test_patch_gradient_lands_in_raster_order():
    """Token 2 of a 4x4-patch frame pair is merge window 0, row 1, column 0 (Qwen2-VL order): its gradient must
    land on pixel rows 14..27, columns 0..13 of frames 0 and 1, nowhere else. unpatchify inverts patchify."""
    frames = torch.rand(1, 2, 3, 56, 56, requires_grad=True)
    patches, grid = patchify(frames)
    assert grid == (1, 4, 4)
    patches[0, 2].sum().backward()
    hit = frames.grad[0].abs().sum(dim=1) > 0  # [T, H, W]
    expected = torch.zeros(2, 56, 56, dtype=torch.bool)
    expected[:, 14:28, 0:14] = True
    assert torch.equal(hit, expected)
    torch.testing.assert_close(unpatchify(patches[0].detach(), grid), frames[0].detach())


# ---------------------------------------------------------------------------------------------------- scores
def _reference_scores(reward, tok, frames, prompts):
    """VideoAlign's way: the processor builds ids (expanding <|video_pad|>), mm_token_type_ids and patches from the
    resized frames; the model runs; rm_head is applied to every hidden state and the diagonal of the [B, 3, 3]
    logits at the special tokens is (VQ, MQ, TA) (trainer.py, reward_token "special")."""
    proc = _processor(tok)
    text = [CHAT_PREFIX + "<|vision_start|><|video_pad|><|vision_end|>" + DETAILED_SPECIAL_PROMPT.format(text_prompt=p)
            + CHAT_SUFFIX for p in prompts]
    norm = {"image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)}
    batch = proc(text=text, videos=list(frames), padding=True, return_tensors="pt",
                 videos_kwargs={"do_rescale": False, "do_resize": False, **norm})
    qwen = reward._qwen()
    hidden = qwen.model(**batch, use_cache=False).last_hidden_state
    logits = reward.rm_head(hidden)
    ids = tok.convert_tokens_to_ids(list(REWARD_TOKENS.values()))
    mask = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    for i in ids:
        mask |= batch["input_ids"] == i
    pooled = logits[mask].view(len(prompts), 3, 3).diagonal(dim1=1, dim2=2)
    return pooled


def test_scores_equal_a_forward_through_the_processor(reward, tok):
    video = _video(t=5, seed=5)  # odd: Stream-R1 drops the last frame
    with torch.no_grad():
        ours = reward(video, PROMPTS)
        ref = _reference_scores(reward, tok, video[:, :4], PROMPTS)
    assert set(ours) == {"VQ", "MQ", "TA"}
    got = torch.stack([ours["VQ"], ours["MQ"], ours["TA"]], dim=1)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert reward.scored_frames(5) == [0, 1, 2, 3]


def test_scores_are_differentiable_and_batched_backward_matches(reward):
    """One batched backward over the three axes (the reward service's way) equals three backward passes."""
    video = _video(b=1, t=4, seed=6, h=70, w=98).requires_grad_(True)
    out = reward(video, PROMPTS[:1])
    total = torch.stack([out[a].sum() for a in ("VQ", "MQ", "TA")])
    batched = torch.autograd.grad(total, video, grad_outputs=torch.eye(3), is_grads_batched=True,
                                  retain_graph=True)[0]
    for i in range(3):
        (single,) = torch.autograd.grad(total[i], video, retain_graph=True)
        torch.testing.assert_close(batched[i], single, atol=1e-6, rtol=1e-4)
        assert single.abs().sum() > 0


def test_bad_input_is_refused(reward, tok):
    with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
        reward(torch.rand(1, 4, 56, 84), ["x"])
    with pytest.raises(ValueError, match="prompts for"):
        reward(_video(b=2), ["only one"])
    with pytest.raises(ValueError, match="multiples of 28"):
        VideoAlignReward.from_parts(reward.model, tok, reward.rm_head, size=(50, 84))
    with pytest.raises(ValueError, match="reward tokens"):
        VideoAlignReward.from_parts(reward.model, _tokenizer(reward_tokens=False), reward.rm_head)


# ---------------------------------------------------------------------------------------------------- loading
@pytest.fixture(scope="module")
def published(tmp_path_factory):
    folder, reference = write_random_videoreward(str(tmp_path_factory.mktemp("videoreward")), prompts=PROMPTS)
    return folder, reference.eval()


def test_legacy_keys_renamed_by_transformers_mapping(reward):
    rename = legacy_key_renamer(reward._qwen())
    assert rename("visual.blocks.0.attn.qkv.weight") == "model.visual.blocks.0.attn.qkv.weight"
    assert rename("model.layers.1.mlp.up_proj.weight") == "model.language_model.layers.1.mlp.up_proj.weight"
    assert rename("model.embed_tokens.weight") == "model.language_model.embed_tokens.weight"
    assert rename("lm_head.weight") == "lm_head.weight"


def test_loads_videoreward_saved_in_the_old_layout(published):
    folder, reference = published
    with open(os.path.join(folder, "checkpoint-1234", "adapter_config.json")) as fh:
        assert json.load(fh)["target_modules"][0].startswith("model.layers.")  # really the old names
    video = _video(b=2, t=4, seed=7)
    loaded = VideoAlignReward(folder, torch_dtype="float32", size=SIZE).eval()
    unmerged = VideoAlignReward(folder, torch_dtype="float32", size=SIZE, merge_lora=False).eval()
    with torch.no_grad():
        ref = reference(video, PROMPTS)
        got = loaded(video, PROMPTS)
        got_unmerged = unmerged(video, PROMPTS)
    for a in ("VQ", "MQ", "TA"):
        torch.testing.assert_close(got_unmerged[a], ref[a], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(got[a], ref[a], atol=1e-5, rtol=1e-5)
    # The checkpoint really was applied: the trained vision tower replaced the base's, the LoRA moved the weights.
    # (transformers 5 writes a Qwen2-VL folder in the 4.x key layout too, so the base file's keys are renamed.)
    rename = legacy_key_renamer(loaded._qwen())
    base_file = os.path.join(os.path.dirname(folder), "Qwen2-VL-tiny", "model.safetensors")
    base = {rename(k): v for k, v in safetensors.torch.load_file(base_file).items()}
    sd = loaded._qwen().state_dict()
    ref_sd = reference._qwen().state_dict()
    for key in ("model.visual.blocks.0.attn.qkv.weight", "model.language_model.layers.0.self_attn.q_proj.weight"):
        assert not torch.allclose(sd[key], base[key])
    torch.testing.assert_close(sd["model.visual.blocks.0.attn.qkv.weight"],
                               ref_sd["model.visual.blocks.0.attn.qkv.weight"])
    assert loaded.statistics == videoreward_statistics(folder) == {
        "VQ": {"mean": 3.1, "std": 2.2}, "MQ": {"mean": 1.2, "std": 1.4}, "TA": {"mean": 2.8, "std": 2.5}}


def _broken_copy(folder, tmp_path, edit):
    dst = os.path.join(str(tmp_path), "broken")
    shutil.copytree(folder, dst)
    edit(os.path.join(dst, "checkpoint-1234"))
    return dst


def _edit_pth(drop):
    def edit(ckpt):
        f = os.path.join(ckpt, "non_lora_state_dict.pth")
        sd = torch.load(f, weights_only=True)
        torch.save({k: v for k, v in sd.items() if not drop(k)}, f)
    return edit


def _edit_adapter(drop):
    def edit(ckpt):
        f = os.path.join(ckpt, "adapter_model.safetensors")
        sd = safetensors.torch.load_file(f)
        safetensors.torch.save_file({k: v for k, v in sd.items() if not drop(k)}, f)
    return edit


@pytest.mark.parametrize(("edit", "error", "match"), [
    (_edit_pth(lambda k: k.endswith("rm_head.weight")), ValueError, "no reward head"),
    (_edit_pth(lambda k: ".visual." in k and "blocks.1." in k), ValueError, "lacks weights that VideoReward trained"),
    (_edit_adapter(lambda k: "layers.0.mlp.up_proj.lora_B" in k), ValueError, "only one of A and B"),
    (_edit_adapter(lambda k: "layers.1." in k), ValueError, "target modules whose weights are missing"),
    (lambda ckpt: os.remove(os.path.join(ckpt, "adapter_model.safetensors")), FileNotFoundError, "LoRA weights"),
])
def test_incomplete_checkpoint_is_refused(published, tmp_path, edit, error, match):
    broken = _broken_copy(published[0], tmp_path, edit)
    with pytest.raises(error, match=match):
        VideoAlignReward(broken, torch_dtype="float32", size=SIZE)


def test_stats_command_writes_normalization_file(published, tmp_path):
    from streamr1.rewards.normalization import RewardNormalizer
    from streamr1.rewards.videoalign import main

    out = str(tmp_path / "stats.json")
    main(["stats", published[0], "--output", out])
    norm = RewardNormalizer.load(out)
    z = norm({"VQ": torch.tensor([3.1 + 2.2]), "MQ": torch.tensor([1.2]), "TA": torch.tensor([2.8 - 2.5])})
    assert [float(z[a]) for a in ("VQ", "MQ", "TA")] == pytest.approx([1.0, 0.0, -1.0])


def test_service_saliency_of_sampled_videoalign_reaches_every_latent_frame(reward, tok):
    """VideoReward's own 2 fps sampling (10 of 81 frames) through the reward service: the pixel saliency is zero on
    the 71 frames not scored, yet all 21 latent frames get saliency (SPEC §4.6)."""
    from streamr1.rewards.service import RewardService

    sampled = VideoAlignReward.from_parts(reward.model, tok, reward.rm_head, size=SIZE, sample_fps=2.0)
    assert sampled.scored_frames(81) == [0, 9, 18, 27, 36, 44, 53, 62, 71, 80]
    service = RewardService(model=sampled, normalization=None, keep_pixels=True)
    service.prepare("cpu")
    video = _video(b=1, t=81, seed=8) * 2 - 1
    result = service.score(video, PROMPTS[:1], saliency=True, latent_shape=(21, 7, 10))
    for axis in ("VQ", "MQ", "TA"):
        per_pixel_frame = result.pixel_saliency[axis][0].flatten(1).amax(dim=1)
        assert int((per_pixel_frame > 0).sum()) == 10
        assert bool((result.saliency[axis][0].mean(dim=(1, 2)) > 0).all()), axis


def test_bfloat16_load_scores_and_gradient(published):
    """Loaded in bf16 (the default, as trained): scores in float32 near the fp32 ones, a float32 pixel gradient."""
    folder, reference = published
    loaded = VideoAlignReward(folder, size=SIZE).eval()  # torch_dtype defaults to bfloat16
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    video = _video(b=1, t=4, seed=9).requires_grad_(True)
    out = loaded(video, PROMPTS[:1])
    with torch.no_grad():
        ref = reference(video, PROMPTS[:1])
    for a in ("VQ", "MQ", "TA"):
        assert out[a].dtype == torch.float32
        torch.testing.assert_close(out[a].detach(), ref[a], atol=0.1 * float(ref[a].abs().max()) + 0.05, rtol=0)
    out["TA"].sum().backward()
    assert video.grad.dtype == torch.float32 and float(video.grad.abs().sum()) > 0
